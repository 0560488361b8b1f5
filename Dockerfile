# fastproxy sidecar image. Multi-stage: build the wheel (and run the C tests)
# in a full toolchain, ship only the runtime.
FROM debian:bookworm-slim AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc libc6-dev make python3 python3-dev python3-venv >/dev/null && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make test-c \
 && python3 -m venv /opt/fastproxy \
 && /opt/fastproxy/bin/pip install -q --upgrade pip \
 && /opt/fastproxy/bin/pip install -q .

FROM debian:bookworm-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3 iptables nftables iproute2 >/dev/null && rm -rf /var/lib/apt/lists/* \
 && groupadd -g 1337 istio-proxy && useradd -u 1337 -g 1337 -M -d /nonexistent -s /usr/sbin/nologin istio-proxy
COPY --from=build /opt/fastproxy /opt/fastproxy
ENV PATH=/opt/fastproxy/bin:$PATH
# 15000 admin (loopback), 15001 outbound, 15006 inbound, 15020 merged metrics, 15021 health, 15090 stats
EXPOSE 15001 15006 15020 15021 15090
USER 1337:1337
ENTRYPOINT ["fastproxy"]
CMD ["run"]
