"""The tests' own writer and reader of signed images, with plain httpx (never occystrap).

The writer pushes an image (or a two-platform index), a cosign-style key signature (ECDSA
P-256 over the simple-signing payload, in the manifest tagged `sha256-<hex>.sig`) and an SPDX
SBOM artifact whose `subject` is the image, listed in the referrers tag index as a registry
without the referrers API needs. The reader verifies a signature and lists referrers by
reading a registry directly, so what occystrap copied is judged by code that is not its own.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
SPDX = "application/spdx+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
ACCEPT = f"{OCI_INDEX}, {OCI_MANIFEST}"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tag_for(digest: str, suffix: str = "") -> str:
    return digest.replace(":", "-") + suffix


@dataclass(frozen=True)
class Pushed:
    """A manifest the writer pushed: its bytes, digest and media type."""

    raw: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return digest_of(self.raw)

    def descriptor(self, **extra) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.raw), **extra}


class RegistryWriter:
    """Pushes blobs and manifests to one repository with a plain httpx client."""

    def __init__(self, client: httpx.Client, repository: str) -> None:
        self.client, self.repository = client, repository

    def blob(self, data: bytes, media_type: str = "application/octet-stream") -> dict:
        started = self.client.post(f"/v2/{self.repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = httpx.URL(started.headers["Location"]).copy_merge_params(
            {"digest": digest_of(data)}
        )
        done = self.client.put(str(location), content=data)
        assert done.status_code == 201, done.text
        return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}

    def manifest(self, document: dict, reference: str | None = None) -> Pushed:
        raw = json.dumps(document, sort_keys=True).encode()
        pushed = Pushed(raw, document["mediaType"])
        answer = self.client.put(
            f"/v2/{self.repository}/manifests/{reference or pushed.digest}",
            content=raw,
            headers={"Content-Type": pushed.media_type},
        )
        assert answer.status_code == 201, answer.text
        return pushed

    def image(self, salt: str, tag: str | None = None, arch: str = "amd64") -> Pushed:
        """A one-layer image whose single file holds `salt`."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("hello.txt")
            content = salt.encode()
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        layer = gzip.compress(buffer.getvalue(), mtime=0)
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [digest_of(buffer.getvalue())]},
            }
        ).encode()
        return self.manifest(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": self.blob(config, OCI_CONFIG),
                "layers": [self.blob(layer, OCI_LAYER_GZIP)],
            },
            tag,
        )

    def index(self, salt: str, tag: str) -> tuple[Pushed, list[Pushed]]:
        """A two-platform index (amd64, arm64) and its platform manifests."""
        platforms = [self.image(f"{salt}-{arch}", arch=arch) for arch in ("amd64", "arm64")]
        entries = [
            image.descriptor(platform={"os": "linux", "architecture": arch})
            for image, arch in zip(platforms, ("amd64", "arm64"), strict=True)
        ]
        index = self.manifest(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, tag
        )
        return index, platforms

    def sbom(self, subject: Pushed, name: str = "sbom.spdx.json") -> Pushed:
        """An SPDX SBOM artifact referring to `subject`, added to its referrers tag index."""
        spdx = json.dumps(
            {"spdxVersion": "SPDX-2.3", "name": name, "packages": [{"name": "hello"}]}
        ).encode()
        artifact = self.manifest(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": SPDX,
                "config": self.blob(b"{}", EMPTY_CONFIG),
                "layers": [self.blob(spdx, SPDX) | {"annotations": {TITLE: name}}],
                "subject": subject.descriptor(),
                "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
            }
        )
        self.add_to_referrers_tag(subject.digest, artifact, SPDX)
        return artifact

    def add_to_referrers_tag(self, subject: str, referrer: Pushed, artifact_type: str) -> None:
        existing = self.client.get(
            f"/v2/{self.repository}/manifests/{tag_for(subject)}", headers={"Accept": OCI_INDEX}
        )
        entries = existing.json()["manifests"] if existing.status_code == 200 else []
        entries.append(referrer.descriptor(artifactType=artifact_type))
        self.manifest(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, tag_for(subject)
        )

    def cosign_sign(
        self, subject: Pushed, key: ec.EllipticCurvePrivateKey, identity: str
    ) -> Pushed:
        """A cosign-style key signature of `subject`, tagged `sha256-<hex>.sig`."""
        payload = json.dumps(
            {
                "critical": {
                    "identity": {"docker-reference": identity},
                    "image": {"docker-manifest-digest": subject.digest},
                    "type": "cosign container image signature",
                },
                "optional": None,
            }
        ).encode()
        signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
        layer = self.blob(payload, SIMPLE_SIGNING) | {
            "annotations": {COSIGN_SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}
        }
        config = json.dumps({"architecture": "", "os": "", "rootfs": {"type": "layers"}}).encode()
        return self.manifest(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": self.blob(config, OCI_CONFIG),
                "layers": [layer],
            },
            tag_for(subject.digest, ".sig"),
        )


class SignedReader:
    """Verifies cosign signatures and lists referrers through `manifest` and `blob`, which
    a registry reader and an OCI archive reader supply."""

    def manifest(self, reference: str) -> bytes | None:
        raise NotImplementedError

    def blob(self, descriptor: dict) -> bytes:
        raise NotImplementedError

    def tag_index_referrers(self, subject: str) -> list[dict]:
        raw = self.manifest(tag_for(subject))
        return [] if raw is None else json.loads(raw)["manifests"]

    def verify_cosign(self, subject: str, public_key: ec.EllipticCurvePublicKey) -> int:
        """How many signatures in `subject`'s `.sig` manifest verify (raises on a bad one)."""
        raw = self.manifest(tag_for(subject, ".sig"))
        assert raw is not None, f"no signature for {subject}"
        verified = 0
        for layer in json.loads(raw)["layers"]:
            assert layer["mediaType"] == SIMPLE_SIGNING
            payload = self.blob(layer)
            claimed = json.loads(payload)["critical"]["image"]["docker-manifest-digest"]
            assert claimed == subject
            signature = base64.b64decode(layer["annotations"][COSIGN_SIGNATURE_ANNOTATION])
            try:
                public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                raise AssertionError(f"the signature of {subject} does not verify") from None
            verified += 1
        return verified


class RegistryReader(SignedReader):
    """Reads referrers and verifies signatures straight from a registry (plain httpx)."""

    def __init__(self, client: httpx.Client, repository: str) -> None:
        self.client, self.repository = client, repository

    def manifest(self, reference: str) -> bytes | None:
        answer = self.client.get(
            f"/v2/{self.repository}/manifests/{reference}", headers={"Accept": ACCEPT}
        )
        if answer.status_code == 404:
            return None
        assert answer.status_code == 200, answer.text
        return answer.content

    def blob(self, descriptor: dict) -> bytes:
        answer = self.client.get(f"/v2/{self.repository}/blobs/{descriptor['digest']}")
        assert answer.status_code == 200, answer.text
        assert digest_of(answer.content) == descriptor["digest"]
        return answer.content

    def referrers(self, subject: str) -> list[dict]:
        """The referrers API's list where the registry has one, else the referrers tag's."""
        answer = self.client.get(
            f"/v2/{self.repository}/referrers/{subject}", headers={"Accept": OCI_INDEX}
        )
        if answer.status_code == 200:
            return answer.json()["manifests"]
        return self.tag_index_referrers(subject)


class ArchiveReader(SignedReader):
    """Reads an OCI archive (an OCI layout as one tarball) with tarfile: tags are the
    `org.opencontainers.image.ref.name`s of `index.json`, and every blob's bytes are checked
    against the digest it is stored under."""

    def __init__(self, path) -> None:
        with tarfile.open(path) as archive:
            self.members = {
                member.name: archive.extractfile(member).read()
                for member in archive.getmembers()
                if member.isfile()
            }
        self.index = json.loads(self.members["index.json"])
        for name, data in self.members.items():
            if name.startswith("blobs/sha256/"):
                assert digest_of(data) == "sha256:" + name.rpartition("/")[2], name

    def tags(self) -> dict[str, str]:
        """ref.name -> digest, from index.json."""
        return {
            entry["annotations"][REF_NAME]: entry["digest"]
            for entry in self.index["manifests"]
            if REF_NAME in entry.get("annotations", {})
        }

    def manifest(self, reference: str) -> bytes | None:
        digest = reference if ":" in reference else self.tags().get(reference)
        if digest is None:
            return None
        return self.members.get("blobs/sha256/" + digest.partition(":")[2])

    def blob(self, descriptor: dict) -> bytes:
        data = self.members["blobs/sha256/" + descriptor["digest"].partition(":")[2]]
        assert len(data) == descriptor["size"]
        return data

    def referrers(self, subject: str) -> list[dict]:
        return self.tag_index_referrers(subject)


def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
