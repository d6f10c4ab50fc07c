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
# (consentd deletes refused audio itself).
ARG BASE=localhost/consentd-base
FROM ${BASE}

RUN python3 -m venv /opt/consentd
COPY pyproject.toml README.md /src/
COPY consentd /src/consentd
RUN /opt/consentd/bin/pip install --no-cache-dir /src && rm -rf /src

ENV CONSENTD_POLICIES=/etc/consentd/policies.yaml \
    CONSENTD_JOURNAL_DIR=/var/lib/consentd/journal \
    CONSENTD_HTTP_HOST=0.0.0.0
VOLUME ["/var/lib/consentd/journal"]
EXPOSE 8090
ENTRYPOINT ["/opt/consentd/bin/consentd"]
CMD ["run"]
