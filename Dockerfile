# fastproxy sidecar image (drop-in for istio-proxy).
#   sidecar:        <image>                 -> fastproxy run  (UID/GID 1337, user istio-proxy)
#   init container: <image> init [flags]    -> fastproxy init (runs as root with NET_ADMIN/NET_RAW)
# Multi-stage: the build stage runs the C tests under ASan/UBSan and compiles the
# wheel; the runtime stage gets only Debian's python3, the netfilter tools and the
# venv. Both stages use Debian's /usr/bin/python3.11, so the venv made in the build
# stage runs unchanged in the runtime stage.
# Builds with `docker build .` or, with no Docker engine, `make image`
# (../shared/tools/container-build.sh: podman, with debian:bookworm-slim from debootstrap).

FROM debian:bookworm-slim AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
        gcc libc6-dev make python3 python3-dev python3-venv >/dev/null \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Dependencies first, read from pyproject.toml alone, so this layer is reused until
# they change. /opt/buildtools holds the build requirements (never shipped);
# /opt/fastproxy is the runtime venv that the last stage copies.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
open("/tmp/deps.txt", "w").write("\n".join(p["project"]["dependencies"])); \
open("/tmp/build-deps.txt", "w").write("\n".join(p["build-system"]["requires"]))' \
 && python3 -m venv /opt/buildtools \
 && /opt/buildtools/bin/pip install -q -r /tmp/build-deps.txt \
 && python3 -m venv /opt/fastproxy \
 && /opt/fastproxy/bin/pip install -q -r /tmp/deps.txt
COPY . .
# C unit tests (every tests/c/test_*.c linked with every csrc/*.c, ASan/UBSan);
# they use 127.0.0.1 TCP and /dev/shm, which the build's own namespaces provide.
RUN make test-c
# The wheel, then the runtime venv: no pip/setuptools in it, no debug symbols.
RUN /opt/buildtools/bin/pip wheel -q --no-deps --no-build-isolation -w /wheels . \
 && /opt/fastproxy/bin/pip install -q --no-deps /wheels/fastproxy-*.whl \
 && /opt/fastproxy/bin/pip uninstall -q -y pip setuptools \
 && find /opt/fastproxy -name '*.so' -exec strip --strip-unneeded {} + \
 && /opt/fastproxy/bin/fastproxy --version

FROM debian:bookworm-slim
ARG DEBIAN_FRONTEND=noninteractive
# python3 = 3.11, the interpreter the venv was made with. iptables (legacy and nft
# variants), nftables and iproute2 are for `fastproxy init`.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
        python3 iptables nftables iproute2 >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
           /usr/share/doc/* /usr/share/man/* /usr/share/info/* \
 && groupadd -g 1337 istio-proxy \
 && useradd -u 1337 -g 1337 -M -d /nonexistent -s /usr/sbin/nologin istio-proxy
COPY --from=build /opt/fastproxy /opt/fastproxy
ENV PATH=/opt/fastproxy/bin:$PATH PYTHONDONTWRITEBYTECODE=1
# 15000 admin (loopback only), 15001 outbound, 15006 inbound, 15020 merged metrics,
# 15021 health (/healthz/ready), 15090 stats
EXPOSE 15001 15006 15020 15021 15090
USER 1337:1337
ENTRYPOINT ["fastproxy"]
CMD ["run"]
