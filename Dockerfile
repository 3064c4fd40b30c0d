# Kavier-OpenDC in a container: Python 3.11 in a virtual environment, a Temurin JDK >= 21, the OpenDC
# bridge jar and the `kavier` command, run as a non-root user. The steps mirror the README's set-up
# (`make setup`): pip install the package, then the bridge jar built with Maven on a JDK >= 21.
#
#   docker build -t kavier-opendc .
#   docker run --rm -u "$(id -u):$(id -g)" -v "$PWD/experiments:/experiments" kavier-opendc \
#       run /experiments/experiment.yaml --out /experiments/results
#
# or docker-compose.yml (services run, sweep, plan and the Dask profile). Build arguments:
#   OPENDC_REPO   a folder INSIDE the build context holding a local Maven repository with OpenDC's
#                 artifacts (org/opendc/...), for air-gapped sites and Maven mirrors without OpenDC
#                 (what KAVIER_OPENDC_REPO is to `make setup`); the default folder is empty: Maven Central
#   UID, GID      the user the image runs as (default 1000:1000); compose passes yours
#   PYTHON_IMAGE, JDK_IMAGE, MAVEN_IMAGE   the base images (tests/docker/standin_images.sh makes local
#                 stand-ins where no image registry answers)
ARG PYTHON_IMAGE=python:3.11-slim
ARG JDK_IMAGE=eclipse-temurin:21-jdk
ARG MAVEN_IMAGE=maven:3.9-eclipse-temurin-21

FROM ${JDK_IMAGE} AS jdk
FROM ${MAVEN_IMAGE} AS maven

# ----------------------------------------------------------------- Python and the JDK (both stages)
FROM ${PYTHON_IMAGE} AS base
# The JDK from the Temurin image (Debian's own packages ship an older default JDK; OpenDC needs 21).
COPY --from=jdk /opt/java/openjdk /opt/java/openjdk
ENV JAVA_HOME=/opt/java/openjdk \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/opt/java/openjdk/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# a virtual environment: Debian-based Pythons refuse system-wide pip installs (PEP 668)
RUN python3 -m venv /opt/venv

# ----------------------------------------------------------------- the bridge jar (Maven, build only)
# Only opendc-bridge/ feeds this stage, so a Python change never rebuilds the jar; Maven, its
# downloads and the local repository stay out of the final image.
FROM base AS bridge
COPY --from=maven /usr/share/maven /usr/share/maven
ENV PATH=/usr/share/maven/bin:$PATH
ARG OPENDC_REPO=docker/no-opendc-repo
COPY ${OPENDC_REPO} /opendc-repo
WORKDIR /build
COPY opendc-bridge/pom.xml pom.xml
# OpenDC from the local repository when one was given (as KAVIER_OPENDC_REPO does for `make setup`)
RUN if [ -d /opendc-repo/org/opendc ]; then echo "-Dopendc.repo=file:///opendc-repo" > /build/repo.flag; \
    else : > /build/repo.flag; fi \
    && mvn -B -q $(cat /build/repo.flag) dependency:go-offline
COPY opendc-bridge/src src
RUN mvn -B -q -Dstyle.color=never $(cat /build/repo.flag) package -DskipTests \
    && test -s target/kavier-opendc-bridge.jar

# ----------------------------------------------------------------- the image
FROM base
ENV MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/home/kavier \
    USER=kavier
WORKDIR /opt/kavier-opendc
# 1. the Python dependencies, from pyproject.toml alone (cached while only the package's code changes)
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -q -r /tmp/requirements.txt && rm /tmp/requirements.txt
# 2. the package, as `make setup` installs it (editable, from this folder; its dependencies are in already)
COPY setup.py MANIFEST.in README.md Makefile ./
# kavier_opendc/schemas is a symlink to ../schemas (COPY keeps it a link), so both are copied
COPY schemas ./schemas
COPY opendc-bridge/pom.xml opendc-bridge/README.md opendc-bridge/
COPY opendc-bridge/src opendc-bridge/src
COPY kavier_opendc ./kavier_opendc
RUN pip install -q --no-deps -e .
# 3. the bridge jar where `make bridge` puts it (opendc-bridge/target/kavier-opendc-bridge.jar), checked
COPY --from=bridge /build/target/kavier-opendc-bridge.jar opendc-bridge/target/kavier-opendc-bridge.jar
RUN python -m kavier_opendc.cli bridge check
# 4. the user: results written into a bind mount belong to UID:GID (compose passes the caller's); any
#    other UID given at run time (docker run -u) works too, with the shared HOME
ARG UID=1000
ARG GID=1000
RUN if [ "$UID" != 0 ]; then groupadd -o -g "$GID" kavier && useradd -o -u "$UID" -g "$GID" -M -d /home/kavier kavier; fi \
    && mkdir -p /home/kavier && chmod 1777 /home/kavier
USER ${UID}:${GID}

# Experiments are mounted here; results are written back into the mount.
WORKDIR /experiments
ENTRYPOINT ["kavier"]
CMD ["demo", "--out", "/experiments/demo"]
