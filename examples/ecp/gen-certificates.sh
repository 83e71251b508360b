#!/usr/bin/env bash
# gen-certificates.sh [DIR]: the private CA and certificates of the ECP example (seed 000), made
# with openssl. The seed's script of the same name made one CA and a certificate + key per role;
# here they are:
#   ca.pem / ca.key            the private CA (ECDSA P-256) that signs everything below
#   datasrv.pem / datasrv.key  the data server's certificate (served by Sluice: serverAuth,
#                              SANs datasrv, localhost, 127.0.0.20)
#   app1..app3.pem / .key      one client certificate per application server (clientAuth,
#                              CN = the client system name the allow-list holds)
# DIR defaults to certs/ next to this script. APPS="app1 app2 app3" picks the client names.
# Existing files are overwritten.
set -euo pipefail
out=${1:-"$(dirname "$0")/certs"}
apps=${APPS:-"app1 app2 app3"}
mkdir -p "$out"
cd "$out"

# Quiet openssl, but show its errors when a step fails.
run() { local log; log=$("$@" 2>&1) || { echo "$log" >&2; return 1; }; }

run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout ca.key -out ca.pem -days 825 -subj "/CN=ECP example CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# leaf NAME EXTENDED_KEY_USAGE SUBJECT_ALT_NAMES
leaf() {
    run openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1.key" -out "$1.csr" -subj "/CN=$1"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
        "$2" "$3" > "$1.ext"
    run openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key \
        -set_serial "0x$(openssl rand -hex 16)" -days 825 -extfile "$1.ext" -out "$1.pem"
    rm -f "$1.csr" "$1.ext"
    chmod 600 "$1.key"
    echo "$(pwd)/$1.pem: $(openssl x509 -in "$1.pem" -noout -subject) ($2)"
}

chmod 600 ca.key
leaf datasrv serverAuth "DNS:datasrv,DNS:localhost,IP:127.0.0.20"
for app in $apps; do
    leaf "$app" clientAuth "DNS:$app"
done
