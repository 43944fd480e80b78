"""``POST /v1/responses/compact`` with the real openai SDK over sockets: a conversation comes back as its user messages
and one compaction item, the summary is an ordinary chat request (routed, charged, in the ledger), and the compacted
window continues the conversation through ``/v1/responses`` as an assistant message holding the summary."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, SQLiteSession, set_tracing_disabled
from agents.memory import OpenAIResponsesCompactionSession
from openai.types.responses import ResponseCompactionItem, ResponseOutputMessage

from gateway.frontdoors import compaction
from gateway.frontdoors.compact_door import INSTRUCTIONS, transcript
from tests.frontdoors.scripted_upstream import SILENT, Scripted, scripted_gateway

CONVERSATION: list[Any] = [
    {"role": "user", "content": "Plan a weekend in Oslo."},
    {"role": "assistant", "content": "Gladly. Let me check the weather."},
    {"type": "function_call", "call_id": "call_w", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
    {"type": "function_call_output", "call_id": "call_w", "output": "-3 C, snow"},
    {"role": "assistant", "content": "It will snow: pack boots."},
    {"role": "user", "content": [{"type": "input_text", "text": "And a museum?"}]},
]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    # gpt-4o too: the Agents SDK compacts with OpenAI model names only
    with scripted_gateway(tmp_path_factory.mktemp("compact"), also=("gpt-4o",)) as env:
        yield env


def _summarising_body(up: Scripted, marker: str) -> dict[str, Any]:
    [body] = [b for b in up.bodies if b["messages"][0].get("content") == INSTRUCTIONS and marker in str(b)]
    return body


async def test_compact_keeps_user_messages_and_summarises_the_rest(up: Scripted) -> None:
    key = up.key(budget_usd=1)
    async with up.openai_client(key) as client:
        raw = await client.responses.with_raw_response.compact(model="m", input=CONVERSATION, instructions="Be brief.")
    compacted = raw.parse()
    assert compacted.object == "response.compaction"
    *users, item = compacted.output
    assert [type(u) for u in users] == [ResponseOutputMessage, ResponseOutputMessage]
    texts = [u.content[0].text for u in users if u.content[0].type == "input_text"]  # type: ignore[union-attr]
    assert texts == ["Plan a weekend in Oslo.", "And a museum?"]
    assert isinstance(item, ResponseCompactionItem) and item.encrypted_content.startswith(compaction.PREFIX)
    assert compaction.decode(item.model_dump(), "output[2]") == "Hello"  # what the upstream wrote
    assert (compacted.usage.input_tokens, compacted.usage.output_tokens) == (12, 9)

    body = _summarising_body(up, "Plan a weekend in Oslo.")
    assert body["model"] == "u" and len(body["messages"]) == 2 and "tools" not in body
    text = body["messages"][1]["content"]
    for part in (
        "[system]\nBe brief.",
        "[user]\nPlan a weekend in Oslo.",
        '[assistant called the tool get_weather as call_w]\n{"city": "Oslo"}',
        "[tool result for call_w]\n-3 C, snow",
        "[assistant]\nIt will snow: pack boots.",
        "[user]\nAnd a museum?",
    ):
        assert part in text

    row = await up.ledger.one_row(raw.headers["x-request-id"])
    assert row["endpoint"] == "compact" and row["chosen_model"] == "m" and row["status_code"] == 200
    assert Decimal(row["cost_usd"]).scaleb(-12) == Decimal("0.00039")  # 12 and 9 tokens; SQLite keeps 1e-12 USD


# openai-python parses the user messages of a compaction as output messages and warns when dumping them (as
# against OpenAI's own API)
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
async def test_the_compacted_window_continues_the_conversation(up: Scripted) -> None:
    key = up.key()
    async with up.openai_client(key) as client:
        compacted = await client.responses.compact(model="m", input=CONVERSATION)
        window = [i.model_dump(mode="json", exclude_none=True) for i in compacted.output]
        answer = await client.responses.create(model="m", input=[*window, {"role": "user", "content": "Open late?"}])
        assert answer.output_text == "Hello"
        # the compaction item is kept among the stored turn's input items, and a later turn builds on it
        listed = await client.responses.input_items.list(answer.id, order="asc")
        assert [i.type for i in listed.data] == ["message", "message", "compaction", "message"]
        await client.responses.create(model="m", input="Thanks!", previous_response_id=answer.id)
    [continued] = up.bodies_for("Open late?")
    assert [(m["role"], m["content"]) for m in continued["messages"]] == [
        ("user", "Plan a weekend in Oslo."),
        ("user", "And a museum?"),
        ("assistant", f"{compaction.SUMMARY_HEADER}\nHello"),
        ("user", "Open late?"),
    ]
    [later] = up.bodies_for("Thanks!")
    assert later["messages"][2]["content"] == f"{compaction.SUMMARY_HEADER}\nHello"


async def test_compact_a_stored_conversation(up: Scripted) -> None:
    key = up.key()
    async with up.openai_client(key) as client:
        first = await client.responses.create(model="m", input="Remember the code word: heron.")
        compacted = await client.responses.compact(model="m", previous_response_id=first.id, input="What was it?")
        users = [u.content[0].text for u in compacted.output if u.type == "message"]  # type: ignore[union-attr]
        assert users == ["Remember the code word: heron.", "What was it?"]
        text = _summarising_body(up, "heron")["messages"][1]["content"]
        assert "[user]\nRemember the code word: heron.\n\n[assistant]\nHello\n\n[user]\nWhat was it?" in text
        # another key's stored response is not found, as for /v1/responses
        with pytest.raises(openai.NotFoundError):
            await up.openai_client(up.key()).responses.compact(model="m", previous_response_id=first.id)


async def test_no_summary_is_a_502_and_the_ledger_says_so(up: Scripted) -> None:
    """A model that writes no summary (reasoning only) fails the compaction; its row records the failure, and the
    answer's cost, which the upstream charged."""
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{up.url}/v1/responses/compact",
            json={"model": "m", "input": SILENT},
            headers={"authorization": f"Bearer {up.key()}"},
        )
    assert r.status_code == 502 and "wrote no summary" in r.json()["error"]["message"]
    row = await up.ledger.one_row(r.headers["x-request-id"])
    assert (row["status_code"], row["error_type"], row["endpoint"]) == (502, "UpstreamUnavailable", "compact")
    assert row["cost_usd"] > 0


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"model": "m"}, "input", None),  # nothing to compact
        ({"input": "hi"}, "model", None),
        ({"model": "m", "input": [{"type": "web_search_call"}]}, "input[0].type", "unsupported_parameter"),
    ],
)
async def test_compact_refuses_bad_requests(
    up: Scripted, payload: dict[str, Any], param: str, code: str | None
) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{up.url}/v1/responses/compact", json=payload, headers={"authorization": f"Bearer {up.key()}"}
        )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and (code is None or error["code"] == code)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("gAAAAABpbWFnaW5lIE9wZW5BSSdz", "was not made by this gateway"),  # OpenAI's encrypted content
        (compaction.PREFIX + "%%%", "is damaged"),
    ],
)
async def test_a_compaction_item_this_gateway_cannot_read_is_a_400(up: Scripted, content: str, says: str) -> None:
    item = {"type": "compaction", "id": "cmp_1", "encrypted_content": content}
    async with up.openai_client(up.key()) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="m", input=[{"role": "user", "content": "hi"}, item])
    error: Any = info.value.body
    assert says in error["message"] and error["param"] == "input[1].encrypted_content"
    assert error["code"] == "invalid_encrypted_content"


def test_transcript_spells_out_images_and_parts() -> None:
    text = transcript(
        [
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
            },
        ]
    )
    assert text == "[user]\nWhat is this? [image]\n\n[assistant called the tool f as c]\n{}"


async def test_the_agents_sdk_compaction_session_works_through_the_gateway(up: Scripted) -> None:
    """The OpenAI Agents SDK's ``OpenAIResponsesCompactionSession`` (compacting after every turn here): each turn
    runs on the compacted window, and the session holds the user messages and one compaction item."""
    client = up.openai_client(up.key())
    set_tracing_disabled(True)
    agent = Agent(name="a", instructions="Be brief.", model=OpenAIResponsesModel("gpt-4o", client))
    session = OpenAIResponsesCompactionSession(
        "s", SQLiteSession("s"), client=client, model="gpt-4o", should_trigger_compaction=lambda _: True
    )
    for turn in ("Plan a weekend in Bergen.", "Which museum first?"):
        result = await Runner.run(agent, turn, session=session)
        assert result.final_output == "Hello"
    items: list[Any] = await session.get_items()
    assert [(i["type"], i.get("role")) for i in items] == [
        ("message", "user"),
        ("message", "user"),
        ("compaction", None),
    ]
    [second] = up.bodies_for("Which museum first?")  # the second turn went out on the first turn's compacted window
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][2]["content"].startswith(compaction.SUMMARY_HEADER)
    await client.close()
