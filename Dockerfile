# Multi-stage build of a static dbpool_exporter binary running as a non-root user, for any
# platform: `docker buildx build --platform linux/amd64,linux/arm64 .`. The build stage runs on
# the builder's own platform and cross-compiles for TARGETOS/TARGETARCH (BuildKit sets both).
FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG TARGETOS
ARG TARGETARCH
# Empty: the VERSION file's version. REVISION: the commit (.git is not in the build context).
ARG VERSION=""
ARG REVISION=unknown
RUN VERSION="${VERSION:-$(cat VERSION)}" && \
    CGO_ENABLED=0 GOOS="${TARGETOS}" GOARCH="${TARGETARCH}" go build -trimpath \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=${VERSION} -X github.com/prometheus/common/version.Revision=${REVISION}" \
      -o /out/dbpool_exporter .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dbpool_exporter /bin/dbpool_exporter
USER 65532:65532
EXPOSE 9930
ENTRYPOINT ["/bin/dbpool_exporter"]
