# Builds the eBPF cloner object (issue 5); included by the top-level Makefile.
# `make bpf-object` compiles bpf/cloner.c with clang when clang exists and otherwise says why
# it did nothing and succeeds: the eBPF tests then skip with that reason.
BPF_CLANG     ?= clang
# asm/types.h lives in the multiarch include directory on Debian.
BPF_MULTIARCH := $(shell (gcc -print-multiarch || dpkg-architecture -qDEB_HOST_MULTIARCH || echo $$(uname -m)-linux-gnu) 2>/dev/null | head -n1)
BPF_CFLAGS    ?= -O2 -g -Wall -target bpf $(if $(BPF_MULTIARCH),-I/usr/include/$(BPF_MULTIARCH))

.PHONY: bpf-object bpf-clean

bpf-object:
	@if ! command -v $(BPF_CLANG) >/dev/null 2>&1; then \
		echo "bpf-object: skipped, $(BPF_CLANG) not found (as root, scripts/bootstrap-system.sh installs it)"; \
	elif [ ! -f /usr/include/bpf/bpf_helpers.h ]; then \
		echo "bpf-object: skipped, bpf/bpf_helpers.h not found (Debian: libbpf-dev)"; \
	else \
		$(MAKE) -s --no-print-directory bpf/cloner.o; \
	fi

bpf/cloner.o: bpf/cloner.c
	@echo "bpf-object: $(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@"
	@$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@

bpf-clean:
	rm -f bpf/cloner.o
