"""Weight files: safe loading, ncnn conversion, the manifest, provisioning and the model store."""
