//! Hostile PDFs, made by code: each small on disk, each aimed at one part of the reader.

use std::io::Write;

use flate2::{Compression, write::ZlibEncoder};

/// A PDF of these objects (numbered from 1; object 1 is the catalog) with a correct xref table.
pub fn pdf(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    out
}

pub fn flate(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A stream object; `dict` holds its other entries (a filter, a type).
pub fn stream(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("<< /Length {} {dict} >>\nstream\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\nendstream");
    out
}

/// One page whose content is object 5, with `resources`; `more` are objects 6, 7, …
pub fn one_page(content: Vec<u8>, resources: &str, font: &str, more: Vec<Vec<u8>>) -> Vec<u8> {
    let mut objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources {resources} /Contents 5 0 R >>")
            .into_bytes(),
        font.as_bytes().to_vec(),
        content,
    ];
    objects.extend(more);
    pdf(&objects)
}

const FONT: &str = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>";
const WITH_FONT: &str = "<< /Font << /F1 4 0 R >> >>";

/// A page of ordinary text (the control: it becomes a ready document).
pub fn plain() -> Vec<u8> {
    let text = b"BT /F1 12 Tf 72 700 Td (A plain page about hostile files and their readers) Tj ET";
    one_page(stream("", text), WITH_FONT, FONT, vec![])
}

/// A ToUnicode map of four thousand full two-byte ranges (262 million codes).
pub fn cmap_ranges() -> Vec<u8> {
    let mut cmap = b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n".to_vec();
    for _ in 0..40 {
        cmap.extend_from_slice(b"100 beginbfrange\n");
        cmap.extend_from_slice(&b"<0000> <FFFF> <0041>\n".repeat(100));
        cmap.extend_from_slice(b"endbfrange\n");
    }
    cmap.extend_from_slice(b"endcmap CMapName currentdict /CMap defineresource pop end end");
    let font = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /ToUnicode 6 0 R >>";
    one_page(
        stream("", b"BT /F1 12 Tf 72 700 Td (AB) Tj ET"),
        WITH_FONT,
        font,
        vec![stream("/Filter /FlateDecode", &flate(&cmap))],
    )
}

/// A ToUnicode stream that inflates to 200 MB (the font's only map to text).
pub fn cmap_bomb() -> Vec<u8> {
    let font = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /ToUnicode 6 0 R >>";
    one_page(
        stream("", b"BT /F1 12 Tf 72 700 Td (Bounded readers) Tj ET"),
        WITH_FONT,
        font,
        vec![stream("/Filter /FlateDecode", &flate(&vec![b' '; 200 << 20]))],
    )
}

/// A page content stream that inflates to 200 MB.
pub fn content_bomb() -> Vec<u8> {
    one_page(stream("/Filter /FlateDecode", &flate(&vec![b' '; 200 << 20])), WITH_FONT, FONT, vec![])
}

/// A form XObject whose content inflates through two layers of Flate to 200 MB.
pub fn form_bomb() -> Vec<u8> {
    let twice = flate(&flate(&vec![b' '; 200 << 20]));
    let form = stream("/Filter [/FlateDecode /FlateDecode] /Type /XObject /Subtype /Form /BBox [0 0 10 10]", &twice);
    one_page(stream("", b"/X0 Do"), "<< /XObject << /X0 6 0 R >> >>", FONT, vec![form])
}

/// One text-showing operator with a 20 MB string.
pub fn huge_string() -> Vec<u8> {
    let mut content = b"BT /F1 12 Tf 72 700 Td (".to_vec();
    content.extend(std::iter::repeat_n(b'A', 20 << 20));
    content.extend_from_slice(b") Tj ET");
    one_page(stream("/Filter /FlateDecode", &flate(&content)), WITH_FONT, FONT, vec![])
}

/// Arrays nested 200,000 deep in the catalog.
pub fn deep_arrays() -> Vec<u8> {
    let mut catalog = b"<< /Type /Catalog /Pages 2 0 R /X ".to_vec();
    catalog.extend(std::iter::repeat_n(b'[', 200_000));
    catalog.extend(std::iter::repeat_n(b']', 200_000));
    catalog.extend_from_slice(b" >>");
    pdf(&[
        catalog,
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>".to_vec(),
    ])
}

/// Dictionaries nested 200,000 deep in a page.
pub fn deep_dictionaries() -> Vec<u8> {
    let mut page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /X ".to_vec();
    page.extend_from_slice(&b"<< /A ".repeat(200_000));
    page.extend_from_slice(&b">> ".repeat(200_000));
    page.extend_from_slice(b" >>");
    pdf(&[b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(), b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(), page])
}

/// A page tree whose node lists itself among its kids.
pub fn self_referencing_pages() -> Vec<u8> {
    pdf(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>".to_vec(),
        stream("", b"BT /F1 12 Tf 72 700 Td (loop) Tj ET"),
    ])
}

/// A form XObject that draws itself, four times over, and nothing else.
pub fn self_drawing_form() -> Vec<u8> {
    let form = stream(
        "/Type /XObject /Subtype /Form /BBox [0 0 10 10] /Resources << /XObject << /X0 6 0 R >> >>",
        b"/X0 Do /X0 Do /X0 Do /X0 Do",
    );
    one_page(stream("", b"/X0 Do"), "<< /XObject << /X0 6 0 R >> >>", FONT, vec![form])
}

/// Two hundred object streams, each inflating to 8 MB of nothing.
pub fn many_object_streams() -> Vec<u8> {
    object_streams(200)
}

/// `n` object streams, each inflating to 8 MB of nothing: the file loads slowly.
pub fn object_streams(n: usize) -> Vec<u8> {
    let empty = flate(&vec![b' '; 8 << 20]);
    let mut objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>".to_vec(),
    ];
    for _ in 0..n {
        objects.push(stream("/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode", &empty));
    }
    pdf(&objects)
}

/// The xref table's offsets all point at the wrong places.
pub fn broken_xref() -> Vec<u8> {
    let good = plain();
    let text = String::from_utf8_lossy(&good).into_owned();
    let start = text.find("xref\n").unwrap();
    let mut out = good[..start].to_vec();
    out.extend_from_slice(b"xref\n0 6\n0000000000 65535 f \n");
    for _ in 0..5 {
        out.extend_from_slice(b"0000099999 00000 n \n");
    }
    out.extend_from_slice(b"trailer\n<< /Size 6 /Root 1 0 R >>\nstartxref\n999999\n%%EOF\n");
    out
}

/// The first half of a PDF.
pub fn truncated() -> Vec<u8> {
    let good = plain();
    good[..good.len() / 2].to_vec()
}

/// A CID font whose width array describes a billion glyphs, and one of a million entries.
pub fn absurd_widths() -> Vec<u8> {
    let mut widths = b"[0 [".to_vec();
    widths.extend_from_slice(&b"500 ".repeat(1_000_000));
    widths.extend_from_slice(b"] 0 2000000000 500]");
    cid_font_page(widths)
}

/// A page in a CID font with these widths (`/W`) and no map to text.
fn cid_font_page(widths: Vec<u8>) -> Vec<u8> {
    let descendant = [
        b"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /X /CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> /W ".to_vec(),
        widths,
        b" >>".to_vec(),
    ]
    .concat();
    let font = "<< /Type /Font /Subtype /Type0 /BaseFont /X /Encoding /Identity-H /DescendantFonts [6 0 R] >>";
    one_page(stream("", b"BT /F1 12 Tf 72 700 Td <00410042> Tj ET"), WITH_FONT, font, vec![descendant])
}

/// A font program that claims 65,535 glyphs and holds a few bytes (the standard encoding serves).
pub fn absurd_glyph_count() -> Vec<u8> {
    // a CFF header, then an INDEX count of 65,535 with an offset size of 4 and nothing after
    let cff = [1u8, 0, 4, 1, 0xFF, 0xFF, 4, 0, 0, 0, 1];
    let descriptor = "<< /Type /FontDescriptor /FontName /X /Flags 4 /FontBBox [0 0 1 1] /ItalicAngle 0 /Ascent 1 /Descent 0 /CapHeight 1 /StemV 1 /FontFile3 7 0 R >>";
    let font = "<< /Type /Font /Subtype /Type1 /BaseFont /X /FontDescriptor 6 0 R >>";
    one_page(
        stream("", b"BT /F1 12 Tf 72 700 Td (Readers survive) Tj ET"),
        WITH_FONT,
        font,
        vec![descriptor.as_bytes().to_vec(), stream("/Subtype /Type1C", &cff)],
    )
}

/// Five hundred pages that share one content stream of 200,000 operators: slow to read, in
/// little memory.
pub fn slow() -> Vec<u8> {
    let content = b"0 0 m ".repeat(200_000);
    let pages = 500;
    let kids: Vec<String> = (0..pages).map(|i| format!("{} 0 R", i + 4)).collect();
    let mut objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        format!("<< /Type /Pages /Kids [{}] /Count {pages} >>", kids.join(" ")).into_bytes(),
        stream("/Filter /FlateDecode", &flate(&content)),
    ];
    for _ in 0..pages {
        objects.push(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R >>".to_vec());
    }
    pdf(&objects)
}

/// One page of two million operators: within every cap of the reader, but its operators alone
/// take some hundreds of MB to hold — for the child's memory limit.
pub fn heavy() -> Vec<u8> {
    let content = b"0 0 m ".repeat(2_000_000);
    one_page(stream("/Filter /FlateDecode", &flate(&content)), WITH_FONT, FONT, vec![])
}

/// One page per content string, in Helvetica.
pub fn pages(contents: &[String]) -> Vec<u8> {
    let n = contents.len();
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    let mut objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")).into_bytes(),
        FONT.as_bytes().to_vec(),
    ];
    for (i, content) in contents.iter().enumerate() {
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
                5 + 2 * i
            )
            .into_bytes(),
        );
        objects.push(stream("", content.as_bytes()));
    }
    pdf(&objects)
}

/// A CID font whose width array repeats a 65,536-code range 100,000 times (6.5 billion entries).
pub fn repeated_width_ranges() -> Vec<u8> {
    let mut widths = b"[".to_vec();
    widths.extend_from_slice(&b"0 65535 500 ".repeat(100_000));
    widths.extend_from_slice(b"]");
    cid_font_page(widths)
}

/// A page of `lines` in any script, left to right: a Type 0 font with two-byte codes, one per
/// distinct character, and a ToUnicode map from each code to its character (no font program: a
/// reader needs only the map for the text).
pub fn unicode_page(lines: &[&str]) -> Vec<u8> {
    let mut chars: Vec<char> = lines.iter().flat_map(|l| l.chars()).collect();
    chars.sort_unstable();
    chars.dedup();
    let code = |c: char| chars.binary_search(&c).unwrap() + 1;
    let mut content = String::from("BT /F1 11 Tf 14 TL 72 740 Td\n");
    for line in lines {
        let hex: String = line.chars().map(|c| format!("{:04X}", code(c))).collect();
        content.push_str(&format!("<{hex}> Tj T*\n"));
    }
    content.push_str("ET");
    let mut cmap = String::from(
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n\
         /CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n\
         /CMapName /Test-UCS def /CMapType 2 def\n\
         1 begincodespacerange <0000> <FFFF> endcodespacerange\n",
    );
    for block in chars.chunks(100) {
        cmap.push_str(&format!("{} beginbfchar\n", block.len()));
        for c in block {
            let mut units = [0u16; 2];
            let utf16: String = c.encode_utf16(&mut units).iter().map(|u| format!("{u:04X}")).collect();
            cmap.push_str(&format!("<{:04X}> <{utf16}>\n", code(*c)));
        }
        cmap.push_str("endbfchar\n");
    }
    cmap.push_str("endcmap CMapName currentdict /CMap defineresource pop end end");
    let font = "<< /Type /Font /Subtype /Type0 /BaseFont /TestSans /Encoding /Identity-H \
                /DescendantFonts [7 0 R] /ToUnicode 6 0 R >>";
    let descendant = "<< /Type /Font /Subtype /CIDFontType2 /BaseFont /TestSans \
                      /CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> /DW 500 >>";
    one_page(
        stream("", content.as_bytes()),
        WITH_FONT,
        font,
        vec![stream("", cmap.as_bytes()), descendant.as_bytes().to_vec()],
    )
}
