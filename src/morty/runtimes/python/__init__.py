"""The Python runtime: ``server.py`` (the HTTP server alpha starts) and ``morty_runtime.py`` (the handler API).

Both files are standard library only and are copied as they are into function images, where ``server.py`` runs as a
script (``python3 /opt/morty/runtimes/python/server.py``) and user code imports ``morty_runtime`` as a top-level
module. ``template/`` is what ``morty init NAME --runtime python`` writes; ``example/`` is a working function.
"""
