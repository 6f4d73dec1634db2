#!/usr/bin/env python3
"""Read published extract files with Python's own gzip and XML parsers (the tests' independent
reader, next to gzip, pigz, xmllint and openssl).

usage: read_extracts.py OUT_DIR FILE...

For each FILE (an SMKIKR_*.xml.gz): decompress every gzip member with Python's gzip module,
parse the XML, check that the root's recordCount equals the number of Certificate elements,
and collect every CertificateBody. Writes into OUT_DIR:
  bodies.pem  every body of every file as a PEM bundle (for `openssl crl2pkcs7`),
  first.der / last.der  the first and the last body seen (for `openssl x509 -inform DER`),
and prints one JSON object: {"files": {name: records}, "bodies": total}. Exits 1 with a
message naming the file on any defect.
"""
import base64
import gzip
import json
import os
import sys
import xml.etree.ElementTree as ET

NS = "{urn:smki-extract:v1}"


def main():
    out_dir, files = sys.argv[1], sys.argv[2:]
    counts = {}
    total = 0
    first = last = None
    with open(os.path.join(out_dir, "bodies.pem"), "w") as bundle:
        for path in files:
            name = os.path.basename(path)
            n = 0
            declared = None
            with gzip.open(path, "rb") as f:
                for event, el in ET.iterparse(f, events=("start", "end")):
                    if event == "start" and el.tag == NS + "SMKIRepositoryExtract":
                        declared = int(el.get("recordCount"))
                    elif event == "end" and el.tag == NS + "Certificate":
                        body = el.find(NS + "CertificateBody")
                        if body is None or not (body.text or "").strip():
                            sys.exit(f"{name}: a Certificate without a CertificateBody")
                        der = base64.b64decode(body.text.strip(), validate=True)
                        b64 = base64.encodebytes(der).decode()
                        bundle.write("-----BEGIN CERTIFICATE-----\n" + b64)
                        bundle.write("-----END CERTIFICATE-----\n")
                        first = first if first is not None else der
                        last = der
                        n += 1
                        el.clear()
            if declared is None:
                sys.exit(f"{name}: no SMKIRepositoryExtract root")
            if declared != n:
                sys.exit(f"{name}: recordCount {declared} but {n} Certificate elements")
            counts[name] = n
            total += n
    for fname, der in (("first.der", first), ("last.der", last)):
        if der is not None:
            with open(os.path.join(out_dir, fname), "wb") as f:
                f.write(der)
    print(json.dumps({"files": counts, "bodies": total}))


if __name__ == "__main__":
    main()
