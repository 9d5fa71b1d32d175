"""Bearer tokens from an OpenID Connect provider: a JWT's signature checked against the
provider's keys (a JWKS file or URL, cached, fetched again for a key id it does not know),
then its issuer, audience, expiry and not-before, with a small clock-skew allowance. PyJWT
does the JOSE work; this decides which keys and claims it is given."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import orjson

from service.config import Settings
from service.domain.commands import valid_organization_id

log = logging.getLogger(__name__)

JWKS_MAX_BYTES = 1_000_000
FETCH_TIMEOUT_S = 5.0
# A token with a key id nobody knows may come again and again: the keys are fetched for it
# at most this often.
REFETCH_MIN_S = 10.0


class KeysUnavailable(Exception):
    """The provider's keys could not be read: no token can be checked now."""


class Jwks:
    """The provider's signing keys by key id."""

    def __init__(self, source: str, cache_s: float) -> None:
        self._source = source
        self._cache_s = cache_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._failure: tuple[float, str] | None = None
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        now = time.monotonic()
        if self._failure is not None and now - self._failure[0] < REFETCH_MIN_S:
            # No keys yet and the provider just failed: every request asking again would
            # queue behind a fetch that may take FETCH_TIMEOUT_S.
            raise KeysUnavailable(self._failure[1])
        stale = now - self._fetched_at > self._cache_s
        unknown = kid not in self._keys and now - self._fetched_at > REFETCH_MIN_S
        if stale or unknown:
            async with self._lock:
                if time.monotonic() - self._fetched_at > min(self._cache_s, REFETCH_MIN_S):
                    await self._refresh()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid or "")

    async def _refresh(self) -> None:
        try:
            raw = await asyncio.to_thread(self._read)
            document = orjson.loads(raw)
            keys = jwt.PyJWKSet.from_dict(document).keys
        except Exception as error:
            if not self._keys:
                reason = f"{type(error).__name__}: {error}"
                self._failure = (time.monotonic(), reason)
                raise KeysUnavailable(reason) from error
            # The keys held so far stay in use until the provider answers again.
            log.warning("could not refresh the OIDC keys from %s: %r", self._source, error)
            self._fetched_at = time.monotonic()
            return
        self._keys = {k.key_id or "": k for k in keys}
        self._fetched_at = time.monotonic()
        self._failure = None

    def _read(self) -> bytes:
        if self._source.startswith(("https://", "http://")):
            with urllib.request.urlopen(self._source, timeout=FETCH_TIMEOUT_S) as answer:  # noqa: S310 - the scheme is checked
                data: bytes = answer.read(JWKS_MAX_BYTES + 1)
        else:
            data = Path(self._source).read_bytes()[: JWKS_MAX_BYTES + 1]
        if len(data) > JWKS_MAX_BYTES:
            raise ValueError(f"the key set is larger than {JWKS_MAX_BYTES} bytes")
        return data


class OidcVerifier:
    """The organization a valid token is for, or None for any token that is not valid."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_jwks is not None
        self._keys = Jwks(settings.oidc_jwks, settings.oidc_jwks_cache_s)
        self._issuer = settings.oidc_issuer
        self._audience = settings.oidc_audience
        self._algorithms = settings.oidc_algorithm_list
        self._leeway = settings.oidc_leeway_s
        self._claim = settings.oidc_organization_claim.split(".")

    async def organization(self, token: str) -> str | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            return None  # "none", HMAC with a public key as secret, anything not allowed
        key = await self._keys.key(header.get("kid"))
        if key is None:
            return None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as error:
            log.debug("bearer token refused: %s", type(error).__name__)
            return None
        organization = _claim(claims, self._claim)
        return organization if valid_organization_id(organization) else None


def _claim(claims: dict[str, Any], path: list[str]) -> Any:
    value: Any = claims
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
