"""An S3-compatible server (moto, in memory) over TLS, with one bucket made at start.

Environment: S3_CERT, S3_KEY (PEM files), S3_BUCKET (default offload), S3_PORT (4566).
"""

import os
import threading
import time

import boto3
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

port = int(os.environ.get("S3_PORT", "4566"))
app = DomainDispatcherApplication(create_backend_app)
server = make_server(
    "0.0.0.0", port, app, threaded=True,
    ssl_context=(os.environ["S3_CERT"], os.environ["S3_KEY"]),
)
thread = threading.Thread(target=server.serve_forever, daemon=True)
thread.start()
time.sleep(0.5)
s3 = boto3.client(
    "s3",
    endpoint_url=f"https://localhost:{port}",
    region_name="us-east-1",
    verify=os.environ.get("S3_CA", os.environ["S3_CERT"]),
)
s3.create_bucket(Bucket=os.environ.get("S3_BUCKET", "offload"))
print(f"s3: serving https on :{port}", flush=True)
thread.join()
