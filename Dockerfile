# consentd daemon image. `make images` builds it (scripts/images.sh) with no
# registry image: the base is a Debian 12 root made by mmdebstrap and imported
# (python3, python3-venv, sox, libsox-fmt-mp3), and the context holds only the
# wheels of consentd and its dependencies, built on the host with its pip:
#
#   mmdebstrap --variant=minbase --include=python3,python3-venv,sox,libsox-fmt-mp3 \
#       bookworm consentd-base.tar < /dev/null
#   podman import consentd-base.tar localhost/consentd-base
#   pip wheel --wheel-dir CTX/wheels .  &&  cp Dockerfile CTX/
#   podman build --isolation=chroot --format=docker -t localhost/consentd CTX
#
# Configuration is by environment (CONSENTD_*, README) and a mounted policy
# directory: /etc/consentd/policies.yaml and the greetings it names. Asterisk's
# files appear under CONSENTD_ASTERISK_ROOT (e.g. /asterisk): its recording
# spool (consentd deletes refused audio itself, so give the container the
# group that may write there: --group-add 10002, Asterisk's in
# asterisk/Containerfile), its sounds' consentd-custom directory and its
# configuration's consentd directory (README, "Containers"). Secrets come as
# files (podman/docker secrets, CONSENTD_*_FILE), never as arguments.
#
# It runs as the unprivileged user consentd (uid 10001), and the HTTP API
# listens on 127.0.0.1 inside the container, like everywhere else. To serve it
# beyond the container, say so, and put TLS in front of it (README, "TLS in
# front of the HTTP API"); consentd then refuses to start without an API token
# of at least 32 characters:
#
#   podman run -e CONSENTD_HTTP_HOST=0.0.0.0 -p 127.0.0.1:8090:8090 \
#       --secret api_token -e CONSENTD_API_TOKEN_FILE=/run/secrets/api_token ... consentd
ARG BASE=localhost/consentd-base
FROM ${BASE}

# Offline: only the wheels in the context (scripts/images.sh builds them).
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/consentd \
    && /opt/consentd/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --quiet --find-links /tmp/wheels consentd \
    && rm -rf /tmp/wheels

# A system user of its own; the journal is its alone (0700: it holds callers' numbers).
RUN groupadd --system --gid 10001 consentd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/consentd \
        --shell /usr/sbin/nologin consentd \
    && install -d -o consentd -g consentd -m 0700 /var/lib/consentd /var/lib/consentd/journal

ENV CONSENTD_POLICIES=/etc/consentd/policies.yaml \
    CONSENTD_JOURNAL_DIR=/var/lib/consentd/journal \
    CONSENTD_HTTP_HOST=127.0.0.1 \
    CONSENTD_GREETING_CACHE=/var/lib/consentd/greetings
VOLUME ["/var/lib/consentd/journal"]
EXPOSE 8090
# Numeric, so that a runtime's "run as non-root" check can verify it.
USER 10001:10001
# 200 while the daemon serves (ARI, AMI and the ledger or its journal); also
# when CONSENTD_HTTP_HOST is 0.0.0.0, since that includes loopback.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/consentd/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CONSENTD_HTTP_PORT', '8090'), timeout=4)"]
ENTRYPOINT ["/opt/consentd/bin/consentd"]
CMD ["run"]
