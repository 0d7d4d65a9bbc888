"""The ER7 parser, escaping, ACKs and the MLLP frame decoder, without a database."""

from __future__ import annotations

import pytest

from gateway.ehr import hl7v2
from gateway.ehr.ack import ErrorDetail, build_ack
from gateway.ehr.hl7v2 import MLLPDecoder, SegmentBuilder, build_message, frame

ADT = "\r".join([
    "MSH|^~\\&|HIS|HULA|GATEWAY|EUCAIM|20240102120000||ADT^A01^ADT_A01|MSG0001|P|2.5.1",
    "PID|1||12345678^^^HULA^MR~X99^^^NAT^NN||Smith \\T\\ Sons^Ann||19580314|F",
    "NTE|1||line one\\.br\\line two \\F\\ pipe \\S\\ hat \\R\\ tilde \\E\\ backslash \\X4F4B\\",
]) + "\r"


def test_fields_components_repetitions_and_escapes() -> None:
    message = hl7v2.parse(ADT)
    assert message.message_code == "ADT" and message.trigger_event == "A01"
    assert message.control_id == "MSG0001" and message.version == "2.5.1"
    assert message.msh[1] == "|" and message.msh[2] == "^~\\&"
    pid = message.first("PID")
    assert pid is not None
    assert pid.get(3, 1) == "12345678" and pid.get(3, 5) == "MR"
    assert pid.get(3, 1, repetition=2) == "X99" and pid.get(3, 5, repetition=2) == "NN"
    assert pid.get(5, 1) == "Smith & Sons"
    assert pid.get(5, 2) == "Ann"
    assert pid.get(40) == "" and pid.get(5, 9) == ""
    nte = message.first("NTE")
    assert nte is not None
    assert nte.get(3) == "line one\nline two | pipe ^ hat ~ tilde \\ backslash OK"


def test_separators_come_from_msh() -> None:
    text = "MSH#!*$@#HIS#F#GW#G#20240101##ORU!R01#C1#P#2.4\rPID#1##A!B!C*D\r"
    message = hl7v2.parse(text)
    pid = message.first("PID")
    assert pid is not None
    assert pid.get(3, 1) == "A" and pid.get(3, 3) == "C" and pid.get(3, 1, repetition=2) == "D"
    assert message.message_code == "ORU" and message.trigger_event == "R01"


def test_line_endings_are_tolerated() -> None:
    for separator in ("\n", "\r\n", "\r"):
        message = hl7v2.parse(ADT.replace("\r", separator))
        assert [s.name for s in message.segments] == ["MSH", "PID", "NTE"]


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "empty"),
    ("PID|1||123\r", "must start with an MSH"),
    ("MSH|^~\\&\r", "MSH-9"),
    ("MSHA^~\\&|X\r", "field separator"),
    ("MSH|^^\\&|A|B|C|D|E||ADT^A01|1|P|2.5\r", "encoding characters"),
    ("MSH|^~\\&|A|B|C|D|E||ADT^A01||P|2.5\r", "MSH-10"),
    ("MSH|^~\\&|A|B|C|D|E||ADT^A01|1|P|2.5\rP1|x\r", "segment name"),
    ("MSH|^~\\&|A|B|C|D|E||ADT^A01|1|P|2.5\rMSH|^~\\&|A\r", "second MSH"),
])
def test_malformed_messages_are_refused_with_a_reason(text: str, fragment: str) -> None:
    with pytest.raises(hl7v2.HL7ParseError, match=fragment):
        hl7v2.parse(text)


def test_charset_from_msh18() -> None:
    text = "MSH|^~\\&|A|B|C|D|20240101||ADT^A08|1|P|2.4||||||8859/1\rPID|1||1||Muñoz^José\r"
    message = hl7v2.parse(text.encode("latin-1"))
    pid = message.first("PID")
    assert pid is not None and pid.get(5, 1) == "Muñoz"
    with pytest.raises(hl7v2.HL7ParseError, match="character set"):
        hl7v2.parse(text.replace("8859/1", "KLINGON").encode("latin-1"))


def test_escape_round_trip() -> None:
    encoding = hl7v2.Encoding()
    original = "a|b^c~d\\e&f\ng"
    segment = SegmentBuilder("NTE").set(3, original)
    message = hl7v2.parse(build_message([SegmentBuilder("MSH").set(9, ["ADT", "A01"]).set(10, "1").set(11, "P")
                                        .set(12, "2.5"), segment]))
    nte = message.first("NTE")
    assert nte is not None and nte.get(3) == original
    assert encoding.escape_text("|") == "\\F\\"


def test_split_batch_skips_envelopes() -> None:
    text = "FHS|^~\\&\nBHS|^~\\&\n" + ADT.replace("\r", "\n") + "\n" + ADT.replace("MSG0001", "MSG0002") + \
        "BTS|2\nFTS|1\n"
    messages = hl7v2.split_batch(text)
    assert [hl7v2.parse(m).control_id for m in messages] == ["MSG0001", "MSG0002"]
    with pytest.raises(hl7v2.HL7ParseError):
        hl7v2.split_batch("PID|1\r" + ADT)


def test_ack_v25_has_err_with_location_and_code() -> None:
    original = hl7v2.parse(ADT)
    ack = hl7v2.parse(build_ack(original, "AE", "bad date", ErrorDetail("102", "PID-7: bad date", "PID", 1, 7)))
    assert ack.msh.get(3) == "GATEWAY" and ack.msh.get(4) == "EUCAIM"
    assert ack.msh.get(5) == "HIS" and ack.msh.get(6) == "HULA"
    assert ack.message_code == "ACK" and ack.trigger_event == "A01"
    msa = ack.first("MSA")
    err = ack.first("ERR")
    assert msa is not None and err is not None
    assert (msa.get(1), msa.get(2)) == ("AE", "MSG0001")
    assert (err.get(2, 1), err.get(2, 2), err.get(2, 3)) == ("PID", "1", "7")
    assert (err.get(3, 1), err.get(3, 3), err.get(4)) == ("102", "HL70357", "E")
    assert err.get(8) == "PID-7: bad date"


def test_ack_v23_uses_err1() -> None:
    original = hl7v2.parse(ADT.replace("|2.5.1", "|2.3"))
    ack = hl7v2.parse(build_ack(original, "AR", "no", ErrorDetail("201", "unsupported event", "MSH", 1, 9)))
    err = ack.first("ERR")
    assert err is not None
    assert (err.get(1, 1), err.get(1, 3), err.get(1, 4, 1), err.get(1, 4, 2)) == ("MSH", "9", "201",
                                                                                  "unsupported event")


def test_decoder_handles_split_and_joined_frames() -> None:
    first, second = frame(ADT), frame(ADT.replace("MSG0001", "MSG0002"))
    decoder = MLLPDecoder(1 << 20)
    stream = first + second
    events = []
    for index in range(0, len(stream), 7):  # frames cut at every seventh byte
        events.extend(decoder.feed(stream[index:index + 7]))
    assert [e.kind for e in events] == ["message", "message"]
    assert hl7v2.parse(events[1].data).control_id == "MSG0002"
    assert [e.kind for e in MLLPDecoder(1 << 20).feed(first + second)] == ["message", "message"]


def test_decoder_reports_junk_and_oversize() -> None:
    decoder = MLLPDecoder(2048)
    events = list(decoder.feed(b"garbage" + frame(ADT)))
    assert [e.kind for e in events] == ["junk", "message"]
    big = frame("MSH|^~\\&|A|B|C|D|E||ADT^A01|BIG|P|2.5\r" + "NTE|" + "x" * 5000 + "\r")
    events = []
    for index in range(0, len(big), 1000):
        events.extend(decoder.feed(big[index:index + 1000]))
    assert [e.kind for e in events] == ["oversize"]
    assert events[0].data.startswith(b"MSH")
    assert [e.kind for e in decoder.feed(frame(ADT))] == ["message"]  # the stream goes on after it
    assert not decoder.pending
    list(decoder.feed(b"\x0bMSH|"))
    assert decoder.pending
