#!/usr/bin/env bash
# A certificate authority and a server certificate for 127.0.0.1 and localhost, made with
# openssl, for the local brokers and databases that require TLS.
#
#   deploy/local/tls.sh DIR
#
# Writes into DIR (once; an existing set is kept): ca.pem (the CA clients trust), ca.key,
# server.pem (the server certificate), server.key (its key, PKCS#8, unencrypted) and
# server-bundle.pem (key and certificate in one file, as Kafka's PEM keystore takes them).
set -euo pipefail

dir="${1:?usage: $0 DIR}"
mkdir -p "$dir"
cd "$dir"
if [[ -s ca.pem && -s server.pem && -s server.key && -s server-bundle.pem ]]; then
    exit 0
fi
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=customer-groups local CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout server.key.tmp -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile server.ext -out server.pem 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in server.key.tmp -out server.key
cat server.key server.pem >server-bundle.pem
rm -f server.key.tmp server.csr server.ext ca.srl
chmod 644 ca.pem server.pem
