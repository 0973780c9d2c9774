# Multi-stage build of a static dbpool_exporter binary running as a non-root user.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=0.0.0-dev
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=${VERSION}" \
      -o /out/dbpool_exporter .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dbpool_exporter /bin/dbpool_exporter
USER 65532:65532
EXPOSE 9930
ENTRYPOINT ["/bin/dbpool_exporter"]
