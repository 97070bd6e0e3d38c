"""The camera side: sources -> a gRPC stream client -> sinks, and `ssn stream`. Torch-free (a small box runs it).

    sources.py   camera specs; image folders, `synthetic:CATEGORY` (frames + ground truth)
    video.py     video files and RTSP/HTTP cameras through PyAV (frames encoded to JPEG once)
    camera.py    one camera: its reader thread, pacing, the bounded window (block or drop-oldest), in-order delivery
    connection.py  one server: the thread that owns its tritonclient stream, matching, reconnect and resend
    client.py    cameras spread over servers, failover, the run loop; `stream(...)` is the Python entry point
    sinks.py     results.jsonl, overlays, alarm hook; records of every frame
    report.py    live table and final summary (rich), streamed image AUROC
    cli.py       `ssn stream`

Imports only the frame contract from the rest of the project (`pipeline.protocol`); never torch or the model.
"""
