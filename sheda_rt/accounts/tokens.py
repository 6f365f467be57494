"""JWT issue and decode. Claims per the contract: sub (user id), scopes, exp, jti;
plus `typ` (access | refresh | otp) so a refresh token is never accepted as an
access token, and `fam` on refresh tokens (rotation families: reusing a rotated
refresh token revokes the whole family)."""
from __future__ import annotations

import uuid
from datetime import timedelta

import jwt

from sheda_rt.errors import Unauthorized


class TokenCodec:
    def __init__(self, secret: str, algorithm: str, clock):
        self._secret = secret
        self._algorithm = algorithm
        self._clock = clock

    def issue(self, user_id: int, scopes: list[str], typ: str, lifetime: timedelta, **extra) -> tuple[str, dict]:
        now = self._clock.now()
        claims = {
            "sub": str(user_id),
            "scopes": scopes,
            "typ": typ,
            "iat": int(now.timestamp()),
            "exp": int((now + lifetime).timestamp()),
            "jti": uuid.uuid4().hex,
            **extra,
        }
        return jwt.encode(claims, self._secret, algorithm=self._algorithm), claims

    def decode(self, token: str, expected_type: str) -> dict:
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[self._algorithm],
                # Time claims are checked against our clock below, never PyJWT's wall clock:
                # a clock moved forward (tests, simulations) must accept the tokens it issued.
                options={"require": ["sub", "exp", "jti"], "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            raise Unauthorized("Invalid token", "invalid_token")
        now = self._clock.now().timestamp()
        if not isinstance(claims["exp"], (int, float)) or claims["exp"] <= now:
            raise Unauthorized("Token has expired", "token_expired")
        if isinstance(claims.get("iat"), (int, float)) and claims["iat"] > now + 60:
            raise Unauthorized("Token is not valid yet", "invalid_token")
        if claims.get("typ") != expected_type:
            raise Unauthorized(f"Expected {'an' if expected_type[0] in 'aeiou' else 'a'} {expected_type} token", "wrong_token_type")
        try:
            int(claims["sub"])
        except (TypeError, ValueError):
            raise Unauthorized("Invalid token", "invalid_token")
        return claims
