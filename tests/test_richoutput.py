import json

from hypothesis import given
from hypothesis import strategies as st

from mlcontainer_magics.core.richoutput import MARK, StdoutDemux


def _collect(chunks):
    out = []
    demux = StdoutDemux(lambda t: out.append(("text", t)), lambda d: out.append(("display", d)))
    for c in chunks:
        demux.feed(c)
    demux.close()
    merged = []
    for kind, v in out:  # adjacent text pieces are one text
        if kind == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + v)
        else:
            merged.append((kind, v))
    return merged


STREAM = "hello\n" + MARK + json.dumps({"data": {"text/plain": "42"}}) + "\n" + "bye\n"


def test_text_and_displays_in_order():
    assert _collect([STREAM]) == [
        ("text", "hello\n"),
        ("display", {"text/plain": "42"}),
        ("text", "bye\n"),
    ]


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=6))
def test_any_chunking_gives_the_same_result(cuts):
    cuts = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0] + cuts, cuts + [len(STREAM)])]
    assert _collect(pieces) == _collect([STREAM])


def test_text_passes_through_without_waiting_for_a_newline():
    out = []
    demux = StdoutDemux(out.append, lambda d: None)
    demux.feed("progress 50%")
    assert out == ["progress 50%"]


def test_one_stream_mode_separates_stderr_and_the_offer_of_output_files():
    from mlcontainer_magics.runner import OUTPUTS_MARK, STDERR_MARK

    text, err, offers = [], [], []
    demux = StdoutDemux(text.append, lambda d: None, err.append, offers.append)
    demux.feed("out\n" + STDERR_MARK + json.dumps("Traceback\n") + "\n")
    offer = {"files": [{"name": "y.json", "size": 3, "sha256": "0" * 64}]}
    demux.feed(OUTPUTS_MARK + json.dumps(offer) + "\n")
    demux.close()
    assert "".join(text) == "out\n" and err == ["Traceback\n"] and offers == [offer]
