# syntax=docker/dockerfile:1
#
# wgbore in a container: a static binary on distroless, as a non-root
# user with nothing else in the image. The tunnel lives in userspace, so
# the container needs no NET_ADMIN, no /dev/net/tun and no capability
# at all.
#
#   docker build -t wgbore .
#   docker run --rm -v "$PWD/wg0.conf:/etc/wgbore/wg0.conf:ro" -p 127.0.0.1:1080:1080 wgbore
#
# The config's [Socks5] must then bind 0.0.0.0:1080: inside the
# container, 127.0.0.1 is the container's own loopback, which -p cannot
# reach. (In a Kubernetes sidecar, 127.0.0.1 is right: the pod shares
# one loopback.) With the whole config in WGBORE_CONFIG instead of a
# mounted file, override the command, since -c would win:
#
#   docker run --rm -e WGBORE_CONFIG="$(cat wg0.conf)" wgbore up -metrics 127.0.0.1:9586 -uapi-dir /tmp
#
# There is no Docker engine in CI: TestStaticBuildRunsUnprivileged runs
# the same .ci/build-static as below and runs its output as UID 65532
# with no capabilities.

# The build runs on the build machine's platform and cross-compiles,
# which a CGO-free build can, so a multi-platform build needs no emulator.
# go1.27.3, the Go that .ci/build-static pins for releases: older ones
# have known vulnerabilities in net/http and crypto/tls that our code
# reaches.
FROM --platform=$BUILDPLATFORM golang:1.27.3 AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS
ARG TARGETARCH
# What `wgbore version` prints; the build context has no .git to say.
ARG WGBORE_VERSION=
# The one build command, shared with CI so the two cannot drift.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
	GOOS=$TARGETOS GOARCH=$TARGETARCH WGBORE_VERSION=$WGBORE_VERSION sh .ci/build-static /out/wgbore

# static-debian12 has CA certificates, /etc/passwd and tzdata, and no
# shell or libc, which a CGO-free binary does not need.
FROM gcr.io/distroless/static-debian12:nonroot
# Owned by the user it runs as: the kernel gives back the pages of a
# binary that start-up and idle collections touched (MADV_PAGEOUT) only
# to a process that owns the file or may write it. A read-only root
# filesystem still keeps the binary from being changed.
COPY --from=build --chown=65532:65532 /out/wgbore /wgbore
# Numeric, not "nonroot": Kubernetes' runAsNonRoot can only verify a
# numeric UID, and refuses to start a container whose image names one.
USER 65532:65532
# 1080: a [Socks5] section's usual port. 9586: /metrics, /healthz and
# /readyz, from -metrics or [Metrics].
EXPOSE 1080 9586
# distroless has no curl or wget, so wgbore probes itself. The probe runs
# inside the container, so the metrics server can stay on loopback; it
# exits 0 when /healthz answers 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
	CMD ["/wgbore", "healthcheck", "-url", "http://127.0.0.1:9586/healthz"]
ENTRYPOINT ["/wgbore"]
# -metrics serves the HEALTHCHECK's /healthz, on loopback only (a
# [Metrics] section in the config does the same; bind 0.0.0.0:9586 there
# for Prometheus to scrape). -uapi-dir /tmp because UID 65532 cannot
# write /var/run/wireguard; `docker exec CONTAINER /wgbore show
# -uapi-dir /tmp wg0` reads the socket there.
CMD ["up", "-c", "/etc/wgbore/wg0.conf", "-metrics", "127.0.0.1:9586", "-uapi-dir", "/tmp"]
