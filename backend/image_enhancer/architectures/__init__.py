"""Facts about an architecture that the runtimes and the model loader share, one file per architecture
(the networks themselves come from spandrel): key names, the halo of a stage run in strips, where a
network splits into stages."""
