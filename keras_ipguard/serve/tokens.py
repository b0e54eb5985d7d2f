"""Bearer tokens of the licence gateway: who holds a licence, until when, MAC'd with a key of the owner secret.

A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(token key, claims))`.
The claims are the user's id and name, the issue and expiry times (Unix
seconds) and a random token id. The token key is derived from `owner.key`
(HMAC with its own label), so a token reveals nothing of the secret and the
gateway needs no state to check one; revocation is checked against the
registry on every request. This module imports no TensorFlow.

Example:

>>> import os
>>> signer = TokenSigner(os.urandom(32), ttl_seconds=60)
>>> token = signer.issue(7, "alice", now=1_000)
>>> signer.check(token, now=1_030).user_id
7
>>> signer.check(token + "x", now=1_030)
Traceback (most recent call last):
...
keras_ipguard.serve.tokens.TokenError: tampered: the token's signature does not verify
"""

import base64
import binascii
import dataclasses
import hmac
import json
import os
import time

# A licence token lives an hour unless `ipguard serve --token-ttl` says otherwise.
DEFAULT_TOKEN_TTL_SECONDS = 3600
MAX_TOKEN_CHARACTERS = 2048
_LABEL = b"ipguard/v1/serve-token"


class TokenError(ValueError):
    """A token that does not authorise: `reason` is malformed, tampered or expired."""

    def __init__(self, reason, detail):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Claims:
    """What a valid token says."""

    user_id: int
    user: str
    issued_at: int
    expires_at: int
    token_id: str


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and checks tokens with a key derived from the owner secret.

    Args:
        owner_key: the vault's owner secret.
        ttl_seconds: how long an issued token is valid.
    """

    def __init__(self, owner_key, ttl_seconds=DEFAULT_TOKEN_TTL_SECONDS):
        if ttl_seconds <= 0:
            raise ValueError(f"token lifetime must be positive, got {ttl_seconds}")
        self._key = hmac.digest(bytes(owner_key), _LABEL, "sha256")
        self.ttl_seconds = int(ttl_seconds)

    def _mac(self, body):
        return hmac.digest(self._key, body, "sha256")

    def issue(self, user_id, user, now=None):
        """A token for `user` (id and name), valid `ttl_seconds` from `now`."""
        now = int(time.time() if now is None else now)
        claims = {"uid": int(user_id), "sub": str(user), "iat": now, "exp": now + self.ttl_seconds,
                  "jti": _b64(os.urandom(12))}
        body = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def check(self, token, now=None):
        """The `Claims` of a genuine, unexpired token; raises `TokenError` (malformed, tampered, expired)."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARACTERS or token.count(".") != 1:
            raise TokenError("malformed", "expected a bearer token issued by POST /v1/licences")
        body_text, mac_text = token.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            raise TokenError("malformed", "the token is not base64url") from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise TokenError("tampered", "the token's signature does not verify")
        claims = json.loads(body)
        now = time.time() if now is None else now
        if now >= claims["exp"]:
            raise TokenError("expired", "the token expired; request a new one at POST /v1/licences")
        return Claims(claims["uid"], claims["sub"], claims["iat"], claims["exp"], claims["jti"])
