# The one imagetag image of docker-compose.yml: the Spark master and worker, the stream and the
# tools all run from it, so the executors have exactly the driver's Python (OpenCV, numpy,
# pandas, pyarrow) and Spark (pyspark's own, with its bin/spark-class and bin/spark-submit).
# The Kafka connector jars for Spark are fetched from Maven Central at build time, as
# `make setup` does.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY imagetag imagetag
COPY producers producers
COPY streaming streaming
COPY batch batch
COPY solr_config solr_config
COPY jvm jvm
# A regular install: the Avro schemas travel as package data (imagetag/schemas).
RUN pip install --no-cache-dir . \
    && cd jvm/spark && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
       -DoutputDirectory=/app/.jvm/spark
ENV SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/usr/local/bin/python
ENTRYPOINT []
