"""OIDC bearer tokens, signed with keys these tests generate: only a valid token for an
allowed algorithm, issuer and audience, inside its time window, yields its organization."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.adapters import oidc
from service.adapters.oidc import KeysUnavailable, OidcVerifier
from service.config import Settings
from tests.unit.test_api import FakeContainer, FakePool, app_on

ISSUER = "https://login.example.com/realms/shop"
AUDIENCE = "customer-groups"
GROUPS = "/api/v1/customer-groups"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    document: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return document | {"kid": kid, "use": "sig"}


def write_keys(path: Path, *keys: tuple[Any, str]) -> None:
    path.write_text(json.dumps({"keys": [public_jwk(key, kid) for key, kid in keys]}))


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 300}
    return body | {"org_id": "org_a"} | changes


def sign(key: Any, kid: str = "k1", algorithm: str = "RS256", **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm=algorithm, headers={"kid": kid})


def corrupt(path: Path) -> None:
    path.write_text("this would fail to parse")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def settings(jwks: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "oidc_issuer": ISSUER,
        "oidc_audience": AUDIENCE,
        "oidc_jwks": str(jwks),
    }
    return Settings(_env_file=None, **(values | overrides))


@pytest.fixture
def key() -> rsa.RSAPrivateKey:
    return rsa_key()


@pytest.fixture
def jwks(tmp_path: Path, key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "jwks.json"
    write_keys(path, (key, "k1"))
    return path


async def test_a_valid_token_yields_its_organization(jwks: Path, key: rsa.RSAPrivateKey) -> None:
    assert await OidcVerifier(settings(jwks)).organization(sign(key)) == "org_a"


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": -120},
        {"nbf": 120},
        {"aud": "someone-else"},
        {"iss": "https://evil.example.com"},
        {"org_id": None},
        {"org_id": "org a"},
        {"org_id": "o" * 65},
        {"org_id": ["org_a"]},
    ],
    ids=[
        "expired",
        "not yet valid",
        "wrong audience",
        "wrong issuer",
        "no organization",
        "organization with a space",
        "organization too long",
        "organization not a string",
    ],
)
async def test_a_token_whose_claims_are_wrong_yields_nothing(
    jwks: Path, key: rsa.RSAPrivateKey, changes: dict[str, Any]
) -> None:
    # Times are seconds from now, when the test runs.
    now = int(time.time())
    changes = {k: now + v if k in ("exp", "nbf") else v for k, v in changes.items()}
    assert await OidcVerifier(settings(jwks)).organization(sign(key, **changes)) is None


async def test_a_small_clock_skew_is_allowed(jwks: Path, key: rsa.RSAPrivateKey) -> None:
    token = sign(key, exp=int(time.time()) - 10, nbf=int(time.time()) + 10)
    assert await OidcVerifier(settings(jwks)).organization(token) == "org_a"
    strict = OidcVerifier(settings(jwks, oidc_leeway_s=0))
    assert await strict.organization(token) is None


async def test_a_token_signed_by_another_key_yields_nothing(jwks: Path) -> None:
    assert await OidcVerifier(settings(jwks)).organization(sign(rsa_key())) is None


async def test_alg_none_yields_nothing(jwks: Path) -> None:
    unsigned = jwt.encode(claims(), "", algorithm="none", headers={"kid": "k1"})
    assert await OidcVerifier(settings(jwks)).organization(unsigned) is None


async def test_hmac_signed_with_the_public_key_as_secret_yields_nothing(
    jwks: Path, key: rsa.RSAPrivateKey
) -> None:
    """The classic algorithm confusion: HS256 keyed with the provider's public key."""
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims()).encode())}"
    signature = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64(signature)}"
    assert await OidcVerifier(settings(jwks)).organization(forged) is None


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "e30.e30.", "ü" * 10])
async def test_garbage_yields_nothing(jwks: Path, token: str) -> None:
    assert await OidcVerifier(settings(jwks)).organization(token) is None


async def test_an_unknown_key_id_fetches_the_keys_again(
    jwks: Path, key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = OidcVerifier(settings(jwks))
    assert await verifier.organization(sign(key)) == "org_a"
    rotated = ec.generate_private_key(ec.SECP256R1())
    write_keys(jwks, (key, "k1"), (rotated, "k2"))
    monkeypatch.setattr(oidc, "REFETCH_MIN_S", 0.0)
    assert await verifier.organization(sign(rotated, kid="k2", algorithm="ES256")) == "org_a"


async def test_unknown_key_ids_do_not_fetch_the_keys_more_than_once_in_a_while(
    jwks: Path, key: rsa.RSAPrivateKey
) -> None:
    verifier = OidcVerifier(settings(jwks))
    assert await verifier.organization(sign(key)) == "org_a"
    corrupt(jwks)
    for n in range(20):
        assert await verifier.organization(sign(rsa_key(), kid=f"random-{n}")) is None
    assert await verifier.organization(sign(key)) == "org_a"  # the known keys still work


async def test_keys_that_cannot_be_read_are_an_error_not_a_refusal(tmp_path: Path) -> None:
    verifier = OidcVerifier(settings(tmp_path / "missing.json"))
    with pytest.raises(KeysUnavailable):
        await verifier.organization(sign(rsa_key()))


async def test_keys_never_read_are_not_asked_for_again_at_every_request(
    tmp_path: Path, key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "late.json"
    verifier = OidcVerifier(settings(missing))
    with pytest.raises(KeysUnavailable, match=r"late\.json"):
        await verifier.organization(sign(key))
    write_keys(missing, (key, "k1"))
    with pytest.raises(KeysUnavailable, match=r"late\.json"):  # still the last failure
        await verifier.organization(sign(key))
    monkeypatch.setattr(oidc, "REFETCH_MIN_S", 0.0)
    assert await verifier.organization(sign(key)) == "org_a"


async def test_the_organization_claim_may_be_nested(jwks: Path, key: rsa.RSAPrivateKey) -> None:
    verifier = OidcVerifier(settings(jwks, oidc_organization_claim="tenant.id"))
    token = sign(key, org_id=None, tenant={"id": "org_nested"})
    assert await verifier.organization(token) == "org_nested"


@pytest.mark.parametrize(
    "overrides",
    [{"oidc_audience": None}, {"oidc_jwks": None}, {"oidc_algorithms": "RS256,HS256"}],
    ids=["no audience", "no keys", "an HMAC algorithm"],
)
def test_oidc_settings_must_be_complete_and_public_key_only(
    jwks: Path, overrides: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="OIDC"):
        settings(jwks, **overrides)


async def test_over_http_a_token_is_its_organization_s_and_a_bad_one_is_401(
    jwks: Path, key: rsa.RSAPrivateKey
) -> None:
    configured = settings(jwks, api_tokens="static-token=org_static")
    pool = FakePool()
    container = FakeContainer(configured, pool=pool, verifier=OidcVerifier(configured))
    transport = httpx.ASGITransport(app=app_on(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:

        async def get(path: str, token: str) -> httpx.Response:
            return await client.get(path, headers={"Authorization": f"Bearer {token}"})

        assert (await get(GROUPS, sign(key))).status_code == 200
        assert pool.queries[-1][0] == "org_a"
        # Another organization's group is not found, as with static tokens.
        assert (await get(f"{GROUPS}/grp_of_b", sign(key))).status_code == 404
        assert pool.queries[-1][0] == "org_a"
        assert (await get(GROUPS, "static-token")).status_code == 200
        assert pool.queries[-1][0] == "org_static"
        expired = await get(GROUPS, sign(key, exp=int(time.time()) - 3600))
        assert expired.status_code == 401
        assert expired.json()["error"] == "Unauthorized"
        assert (await get(GROUPS, "x" * 20_000)).status_code == 401
