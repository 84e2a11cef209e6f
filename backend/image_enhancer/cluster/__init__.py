"""`image-enhancer enhance --cluster`: a batch on Ray Data, across the machines of a Ray cluster.

Ray is an optional extra (`pip install 'image-enhancer[cluster]'`), imported only by `run` when a command
asks for a cluster; `manifest` and `worker` import nothing of Ray, so the rules they hold are tested
without it.
"""
