#!/bin/sh
# Asterisk in the foreground as the image's user (asterisk, uid 10002).
# umask 007: recordings come out 0660, so consentd's container (group 10002)
# may delete refused audio; nothing is world-readable.
set -eu
umask 007
for name in ami ami-tests ari pjsip; do
    [ -r "/run/secrets/consentd-secrets-$name.conf" ] ||
        echo "consentd-asterisk: warning: /run/secrets/consentd-secrets-$name.conf missing" >&2
done
# Without it Asterisk resolves its own host name on every call and waits for DNS.
if ! grep -qs "[[:space:]]$(hostname)\([[:space:]]\|\$\)" /etc/hosts; then
    echo "consentd-asterisk: warning: $(hostname) is not in /etc/hosts (add --add-host)" >&2
fi
exec /usr/sbin/asterisk -f -n "$@"
