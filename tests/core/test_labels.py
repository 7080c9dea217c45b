"""The label map: the published ``id,name`` CSV, looked up by the id column."""

from __future__ import annotations

import pytest
import requests

from function.core.labels import LabelMap
from function.errors import LabelMapError
from function.infra.files import read_document
from standin import hubmodel

URL = "https://www.gstatic.com/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv"


def load(session: requests.Session, url: str, timeout: float) -> LabelMap:
    return LabelMap.load(url, lambda u: read_document(session, u, timeout))


def fetch(requests_mock, body: bytes, **kwargs) -> LabelMap:
    requests_mock.get(URL, content=body, **kwargs)
    return load(requests.Session(), URL, 5.0)


def test_the_published_format_gives_every_class_its_name():
    labels = LabelMap.parse(hubmodel.label_map_csv())
    assert len(labels) == 965
    assert labels[964] == "background"
    assert [labels[k] for k in range(964)] == [hubmodel.species_name(k) for k in range(964)]


def test_names_are_looked_up_by_the_id_column_not_by_row_order():
    labels = LabelMap.parse("id,name\n2,Corvus corax\n0,Parus major\n1,Turdus merula\n")
    assert [labels[0], labels[1], labels[2]] == ["Parus major", "Turdus merula", "Corvus corax"]


def test_an_unknown_id_gets_a_placeholder_name():
    assert LabelMap.parse("id,name\n0,Parus major\n")[7] == "class 7"


def test_a_quoted_name_may_contain_commas():
    labels = LabelMap.parse('id,name\n0,"Pica pica, Elster"\n1,"Say ""cheese"", Magpie"\n')
    assert labels[0] == "Pica pica, Elster"
    assert labels[1] == 'Say "cheese", Magpie'


def test_quoted_names_from_the_generator_round_trip():
    names = {k: f"Species {k}, the {k}th" for k in range(964)}
    labels = LabelMap.parse(hubmodel.label_map_csv(names))
    assert labels[123] == "Species 123, the 123th"


def test_spaces_around_fields_and_a_crlf_file_are_tolerated():
    labels = LabelMap.parse("id , name\r\n 3 , Sitta europaea \r\n\r\n")
    assert labels[3] == "Sitta europaea"
    assert len(labels) == 1


def test_utf8_names_are_decoded_even_without_a_charset(requests_mock):
    # text/csv without a charset: requests would guess ISO-8859-1 for response.text and garble the dash.
    labels = fetch(requests_mock, "id,name\n0,Pica pica – Elster\n1,Grünspecht\n".encode(),
                   headers={"Content-Type": "text/csv"})
    assert labels[0] == "Pica pica – Elster"
    assert labels[1] == "Grünspecht"


def test_a_byte_order_mark_is_tolerated(requests_mock):
    labels = fetch(requests_mock, b"\xef\xbb\xbfid,name\n0,Parus major\n", headers={"Content-Type": "text/csv"})
    assert labels[0] == "Parus major"


def test_a_byte_order_mark_in_text_is_tolerated():
    assert LabelMap.parse("\ufeffid,name\n5,Larus argentatus\n")[5] == "Larus argentatus"


@pytest.mark.parametrize("text", ["class,label\n0,Parus major\n", "id\n0\n", "0,Parus major\n", ""])
def test_a_header_without_id_and_name_is_rejected(text):
    with pytest.raises(LabelMapError, match="header"):
        LabelMap.parse(text)


def test_a_non_integer_id_is_rejected_with_its_line():
    with pytest.raises(LabelMapError, match="line 3.*'two'"):
        LabelMap.parse("id,name\n1,Parus major\ntwo,Turdus merula\n")


def test_a_duplicate_id_is_rejected():
    with pytest.raises(LabelMapError, match="id 1 appears twice"):
        LabelMap.parse("id,name\n1,Parus major\n2,Turdus merula\n1,Corvus corax\n")


def test_an_unquoted_comma_in_a_name_is_rejected():
    with pytest.raises(LabelMapError, match="line 2"):
        LabelMap.parse("id,name\n0,Pica pica, Elster\n")


def test_a_header_with_no_rows_is_rejected():
    with pytest.raises(LabelMapError, match="empty"):
        LabelMap.parse("id,name\n")


def test_fetch_parses_the_served_map(requests_mock):
    labels = fetch(requests_mock, hubmodel.label_map_csv().encode(), headers={"Content-Type": "text/csv"})
    assert labels[0] == hubmodel.species_name(0)
    assert requests_mock.last_request.timeout == 5.0


def test_fetch_rejects_a_404(requests_mock):
    requests_mock.get(URL, status_code=404, text="Not Found")
    with pytest.raises(LabelMapError, match="404"):
        load(requests.Session(), URL, 5.0)


def test_fetch_reads_a_local_file_by_path_or_file_url(tmp_path):
    # The container image carries the label map beside the model: no download at start-up.
    path = tmp_path / "labels.csv"
    path.write_text("id,name\n964,background\n0,Turdus merula\n")
    for where in (str(path), path.as_uri()):
        labels = load(requests.Session(), where, 1.0)
        assert labels[0] == "Turdus merula"


def test_fetch_names_a_missing_local_file(tmp_path):
    with pytest.raises(LabelMapError, match="cannot read the label map .*nope.csv"):
        load(requests.Session(), str(tmp_path / "nope.csv"), 1.0)


def test_common_names_are_read_from_latin_name_common_name_lines():
    labels = LabelMap.from_lines(["Erithacus rubecula", "Anas superciliosa × platyrhynchos", "None"], "test")
    text = ("Erithacus rubecula (European Robin)\n"
            "Anas superciliosa \\xd7 platyrhynchos (Pacific Black Duck \\xd7 Mallard hybrid)\n"
            "background\n")
    named = labels.with_common_names(text, "coral")
    assert [named.common_name(i) for i in range(3)] == ["European Robin", "Pacific Black Duck × Mallard hybrid", None]
    assert named[0] == "Erithacus rubecula" and named.background == frozenset({2})


def test_the_background_class_is_known_by_any_of_its_names():
    for name in ("background", "None", "__background__"):
        assert LabelMap.from_lines(["Turdus merula", name], "test").background == frozenset({1})
    assert LabelMap.from_lines(["Turdus merula", "Pica pica"], "test").background == frozenset()


def test_a_label_map_with_ids_off_by_one_is_refused_naming_the_missing_class():
    labels = LabelMap({k + 1: f"bird {k}" for k in range(3)})
    with pytest.raises(LabelMapError, match="no label for class 0"):
        labels.check(3)


def test_common_names_whose_latin_names_differ_from_the_labels_are_warned_about(caplog):
    labels = LabelMap.from_lines(["Erithacus rubecula", "Turdus merula"], "test")
    swapped = "Turdus merula (Common Blackbird)\nErithacus rubecula (European Robin)\n"
    with caplog.at_level("WARNING"):
        labels.with_common_names(swapped, "coral")
    assert "2 of the common names' Latin names differ" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        labels.with_common_names("Erithacus rubecula (European Robin)\nTurdus merula (Common Blackbird)\n", "coral")
    assert caplog.text == ""
