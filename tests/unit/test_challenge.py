"""WWW-Authenticate parsing: real registry headers, odd spacing, and garbage."""

from hypothesis import given
from hypothesis import strategies as st

from occystrap.middleware.challenge import Challenge, parse_challenges


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _bearer(**params: str) -> str:
    return "Bearer " + ",".join(f"{name}={_quote(value)}" for name, value in params.items())


def test_docker_hub_style_bearer():
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull,push"'
    )
    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull,push",
            },
        )
    ]


def test_case_whitespace_and_unquoted_tokens():
    header = '  BEARER   Realm = https://a/token ,  SERVICE=reg ,scope = "x y"  '
    assert parse_challenges(header) == [
        Challenge("bearer", {"realm": "https://a/token", "service": "reg", "scope": "x y"})
    ]


def test_several_challenges_in_one_header():
    header = 'Negotiate abc==, Basic realm="Registry Realm", Bearer realm="https://t",error=x'
    assert parse_challenges(header) == [
        Challenge("negotiate", {}),
        Challenge("basic", {"realm": "Registry Realm"}),
        Challenge("bearer", {"realm": "https://t", "error": "x"}),
    ]


def test_escaped_quotes_inside_value():
    assert parse_challenges(r'Basic realm="say \"hi\", \\ ok"') == [
        Challenge("basic", {"realm": 'say "hi", \\ ok'})
    ]


def test_unterminated_quote_takes_the_rest():
    assert parse_challenges('Bearer realm="https://t, scope=x') == [
        Challenge("bearer", {"realm": "https://t, scope=x"})
    ]


def test_empty_and_garbage():
    assert parse_challenges("") == []
    assert parse_challenges(' ,,, "" = ==') == []


@given(st.text())
def test_never_raises(header):
    for challenge in parse_challenges(header):
        assert challenge.scheme == challenge.scheme.lower()


_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@given(realm=_values, service=_values, scope=_values)
def test_format_then_parse_round_trips(realm, service, scope):
    header = _bearer(realm=realm, service=service, scope=scope)
    assert parse_challenges(header) == [
        Challenge("bearer", {"realm": realm, "service": service, "scope": scope})
    ]


@given(realm=_values, scope=_values)
def test_round_trip_next_to_another_challenge(realm, scope):
    header = f"Basic realm={_quote(scope)}, " + _bearer(realm=realm, scope=scope)
    assert parse_challenges(header) == [
        Challenge("basic", {"realm": scope}),
        Challenge("bearer", {"realm": realm, "scope": scope}),
    ]
