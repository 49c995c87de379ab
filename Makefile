# Shortcuts; the scripts in infra/ are the real commands (they need no make).
.PHONY: setup demo test down bench
setup:
	bash infra/setup.sh
demo:
	./infra/demo.sh
test:
	./infra/test.sh
down:
	.venv/bin/offload down
bench:
	.venv/bin/python bench/job_overhead.py
