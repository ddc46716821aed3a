FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY events events
COPY projections projections
COPY services services
COPY schemas schemas
# A normal (non-editable) install: the image runs from site-packages, not from this tree.
RUN pip install --no-cache-dir . && rm -rf /src \
 && useradd --system --uid 10001 --home-dir /data chive && mkdir -p /data && chown chive /data
USER chive
WORKDIR /data
ENV CHIVE_DATA_DIR=/data CHIVE_HOST=0.0.0.0 CHIVE_PORT=8080
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["chive-backfill"]
CMD ["up"]
