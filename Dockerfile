FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY events events
COPY projections projections
COPY services services
COPY schemas schemas
RUN pip install --no-cache-dir -e .
ENV CHIVE_DATA_DIR=/data CHIVE_HOST=0.0.0.0 CHIVE_PORT=8080
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["chive-backfill"]
CMD ["up"]
