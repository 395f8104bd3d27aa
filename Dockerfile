# The imagetag image for docker-compose.yml: the package, its console script and the Kafka
# connector jars for Spark (fetched from Maven Central at build time, as `make setup` does).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY imagetag imagetag
COPY producers producers
COPY streaming streaming
COPY batch batch
COPY schemas schemas
COPY solr_config solr_config
COPY jvm jvm
RUN pip install --no-cache-dir -e . \
    && cd jvm/spark && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
       -DoutputDirectory=/app/.jvm/spark
ENTRYPOINT []
