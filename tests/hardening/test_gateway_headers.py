"""Every ``x-gateway-*`` header the gateway parses answers 400 naming the header on any bad value, never a 500
(issue 20: ``x-gateway-cache-ttl: inf`` was an ``OverflowError`` 500). Over a real socket, with hypothesis
generating the values (derandomised)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.constraints import CACHE_TTL_HEADER, PARSED_HEADERS
from tests.hardening.gateways import sim_gateway
from tests.hardening.support import assert_openai_error
from tests.helpers.servers import RunningGateway

BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with sim_gateway(tmp_path_factory.mktemp("headers"), {"cache": {"enabled": True}}) as running:
        yield running


@pytest.fixture(scope="module")
def client(gw: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.base_url, timeout=10) as c:
        yield c


@pytest.mark.parametrize("value", ["inf", "-inf", "1e400", "nan", "-1", "soon", "0x10", "Infinity"])
def test_bad_cache_ttl_is_a_400(client: httpx.Client, value: str) -> None:
    r = client.post("/v1/chat/completions", json=BODY, headers={CACHE_TTL_HEADER: value})
    assert r.status_code == 400, r.text
    err = assert_openai_error(r.json())
    assert err["param"] == CACHE_TTL_HEADER and CACHE_TTL_HEADER in err["message"]


def test_good_cache_ttl_is_served(client: httpx.Client) -> None:
    for value in ("0", "60", "2.5", "1e12"):
        r = client.post("/v1/chat/completions", json=BODY, headers={CACHE_TTL_HEADER: value})
        assert r.status_code == 200, (value, r.text)


NUMBERISH = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**500), max_value=10**500).map(str),
    st.sampled_from(["inf", "-inf", "+inf", "nan", "NaN", "1e400", "-1e400", "1_000", "0x1p3", "١٢", "1e-400", "--1"]),
)
# Header text: printable latin-1 without CR/LF (sent UTF-8 encoded) (leading/trailing blanks are trimmed on the
# wire, and a blank header counts as absent).
TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60)


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(header=st.sampled_from(PARSED_HEADERS), value=st.one_of(NUMBERISH, TEXT))
def test_any_value_of_any_parsed_header_is_served_or_a_400_naming_it(
    gw: RunningGateway, header: str, value: str
) -> None:
    with httpx.Client(base_url=gw.base_url, timeout=10) as c:
        r = c.post("/v1/chat/completions", json=BODY, headers={header.encode(): value.encode()})
    assert r.status_code in (200, 400), (header, value, r.status_code, r.text)
    if r.status_code == 400:
        err = assert_openai_error(r.json())
        assert err["param"] == header and header in err["message"], (header, value, err)
