# Kavier-OpenDC in a container: Python 3.11, a Temurin JDK 21, Maven, the
# OpenDC bridge jar and the `kavier` command. The steps mirror the README's
# set-up (`make setup`): pip install the package with its test extra, then build
# the bridge jar with Maven (python -m kavier_opendc.cli bridge build).
#
#   docker build -t kavier-opendc .
#   docker run --rm -v "$PWD/experiments:/experiments" kavier-opendc \
#       run /experiments/experiment.yaml --out /experiments/results
#
# or use docker-compose.yml (services `run` and `sweep`).
FROM python:3.11-slim

# A JDK >= 21 (OpenDC's bytecode targets Java 21) and Maven, from the Eclipse
# Temurin and Maven images (Debian's own packages ship an older default JDK).
COPY --from=eclipse-temurin:21-jdk /opt/java/openjdk /opt/java/openjdk
COPY --from=maven:3.9-eclipse-temurin-21 /usr/share/maven /usr/share/maven
ENV JAVA_HOME=/opt/java/openjdk \
    MAVEN_HOME=/usr/share/maven \
    PATH=/opt/java/openjdk/bin:/usr/share/maven/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/kavier-opendc

# 1. the bridge's Maven dependencies first (cached while only Python changes)
COPY opendc-bridge/pom.xml opendc-bridge/pom.xml
RUN mvn -B -q -f opendc-bridge/pom.xml dependency:go-offline || true

# 2. the package, installed as `make setup` does: pip install -e '.[test]'
COPY pyproject.toml setup.py MANIFEST.in README.md Makefile ./
# kavier_opendc/schemas is a symlink to ../schemas (COPY keeps it a link), so both are copied
COPY schemas ./schemas
COPY kavier_opendc ./kavier_opendc
COPY opendc-bridge ./opendc-bridge
RUN python -m pip install -e '.[test]'

# 3. the OpenDC bridge jar, as `make bridge` does (opendc-bridge/target/kavier-opendc-bridge.jar)
RUN python -m kavier_opendc.cli bridge build \
    && python -m kavier_opendc.cli bridge check

# Experiments are mounted here; results are written back into the mount.
WORKDIR /experiments
VOLUME ["/experiments"]
ENTRYPOINT ["kavier"]
CMD ["demo", "--out", "/experiments/demo"]
