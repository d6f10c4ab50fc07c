# consentd daemon image. No registry image is needed: build the base from
# Debian packages with mmdebstrap and import it, then build this file:
#
#   mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
#       bookworm consentd-base.tar < /dev/null
#   podman import consentd-base.tar consentd-base
#   podman build --isolation=chroot -t consentd .
#
# Run it next to Asterisk with the CONSENTD_* variables from the README; mount
# the policy file, the journal directory and Asterisk's recording directory
# (consentd deletes refused audio itself, so give the container the group that
# may write there: --group-add <gid of Asterisk's recording group>). Secrets
# come as files (podman/docker secrets, CONSENTD_*_FILE), never as arguments.
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

RUN python3 -m venv /opt/consentd
COPY pyproject.toml README.md /src/
COPY consentd /src/consentd
RUN /opt/consentd/bin/pip install --no-cache-dir /src && rm -rf /src

# A system user of its own; the journal is its alone (0700: it holds callers' numbers).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/consentd \
        --shell /usr/sbin/nologin consentd \
    && install -d -o consentd -g consentd -m 0700 /var/lib/consentd /var/lib/consentd/journal

ENV CONSENTD_POLICIES=/etc/consentd/policies.yaml \
    CONSENTD_JOURNAL_DIR=/var/lib/consentd/journal \
    CONSENTD_HTTP_HOST=127.0.0.1
VOLUME ["/var/lib/consentd/journal"]
EXPOSE 8090
# Numeric, so that a runtime's "run as non-root" check can verify it.
USER 10001:10001
ENTRYPOINT ["/opt/consentd/bin/consentd"]
CMD ["run"]
