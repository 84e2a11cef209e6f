"""Weight files: safe loading, the manifest, provisioning and the model store."""
