#!/usr/bin/env bash
# Build the warm-container agent (src/offload/worker/warm_agent.c) and embed it, base64, in
# src/offload/worker/warm_agent.py: a static x86-64 binary of about 2 KB, no libc, so it runs
# in any image. Needs gcc (x86-64). Run it after changing warm_agent.c, then commit both.
set -euo pipefail
cd "$(dirname "$0")/.."
src=src/offload/worker/warm_agent.c
out=src/offload/worker/warm_agent.py
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc -Os -static -nostdlib -ffreestanding -fno-builtin -fno-tree-loop-distribute-patterns \
    -fno-stack-protector -fno-asynchronous-unwind-tables -fno-pie -no-pie \
    -Wl,--build-id=none -Wl,-n -Wl,-z,norelro -Wl,--no-warn-rwx-segments -s \
    -o "$tmp/agent" "$src"
python3 - "$tmp/agent" "$out" "$(sha256sum "$src" | cut -c1-16)" <<'PY'
import base64, sys, textwrap
data = open(sys.argv[1], "rb").read()
text = base64.b64encode(data).decode()
lines = "\n".join(f'    "{chunk}"' for chunk in textwrap.wrap(text, 88))
open(sys.argv[2], "w").write(f'''"""The warm-container agent, built from ``warm_agent.c`` by ``infra/build-warm-agent.sh``.

Generated: do not edit. Source sha256 prefix: {sys.argv[3]}.
"""

import base64

AGENT_X86_64 = base64.b64decode(
{lines}
)
''')
PY
echo "wrote $out ($(stat -c %s "$tmp/agent") bytes of agent)"
