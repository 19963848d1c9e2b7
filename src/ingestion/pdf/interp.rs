//! A content-stream interpreter that places every shown glyph on the page: the text state,
//! text and graphics matrices, and Form XObjects, as in ISO 32000-1 §9.4.

use std::{collections::HashMap, time::Instant};

use lopdf::{Dictionary, Document, Object, ObjectId, content::Content};

use super::{ExtractError, Limits, fonts::Font};

/// One glyph in page space: `x`, `y` its origin on the baseline, `width` its advance along the
/// baseline, `size` the rendered font size, `angle` the baseline direction in quarter turns.
#[derive(Clone, Debug)]
pub struct Glyph {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub size: f32,
    pub quarter: u8,
    pub text: String,
    /// the glyph was a space in the content (not just a gap)
    pub space: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Matrix([f32; 6]);

impl Matrix {
    const IDENTITY: Matrix = Matrix([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);

    /// self × other (row-vector convention, as PDF writes it)
    fn then(self, other: Matrix) -> Matrix {
        let [a, b, c, d, e, f] = self.0;
        let [a2, b2, c2, d2, e2, f2] = other.0;
        Matrix([
            a * a2 + b * c2,
            a * b2 + b * d2,
            c * a2 + d * c2,
            c * b2 + d * d2,
            e * a2 + f * c2 + e2,
            e * b2 + f * d2 + f2,
        ])
    }

    fn translate(tx: f32, ty: f32) -> Matrix {
        Matrix([1.0, 0.0, 0.0, 1.0, tx, ty])
    }

    fn apply(self, x: f32, y: f32) -> (f32, f32) {
        let [a, b, c, d, e, f] = self.0;
        (x * a + y * c + e, x * b + y * d + f)
    }
}

#[derive(Clone)]
struct GState {
    ctm: Matrix,
    font: Option<Vec<u8>>,
    size: f32,
    char_spacing: f32,
    word_spacing: f32,
    h_scale: f32,
    leading: f32,
    rise: f32,
}

impl Default for GState {
    fn default() -> Self {
        Self {
            ctm: Matrix::IDENTITY,
            font: None,
            size: 0.0,
            char_spacing: 0.0,
            word_spacing: 0.0,
            h_scale: 1.0,
            leading: 0.0,
            rise: 0.0,
        }
    }
}

pub struct Interpreter<'a> {
    doc: &'a Document,
    limits: &'a Limits,
    deadline: Instant,
    fonts: HashMap<ObjectId, Font<'a>>,
    inline_fonts: HashMap<Vec<u8>, Font<'a>>,
    pub glyphs: Vec<Glyph>,
    /// glyphs shown whose text no font could tell (Type3 without a map, missing ToUnicode)
    pub unmapped: usize,
    ops: usize,
}

impl<'a> Interpreter<'a> {
    pub fn new(doc: &'a Document, limits: &'a Limits, deadline: Instant) -> Self {
        Self {
            doc,
            limits,
            deadline,
            fonts: HashMap::new(),
            inline_fonts: HashMap::new(),
            glyphs: Vec::new(),
            unmapped: 0,
            ops: 0,
        }
    }

    pub fn reset_page(&mut self) {
        self.glyphs.clear();
        self.unmapped = 0;
        self.ops = 0;
    }

    pub fn run_page(&mut self, page: ObjectId) -> Result<(), ExtractError> {
        let content = self
            .doc
            .get_page_content_with_limit(page, self.limits.max_content_bytes)
            .map_err(|_| ExtractError::too_complex("a page's content is too large"))?;
        let resources = page_resources(self.doc, page);
        self.run(&content, &resources, GState::default(), 0)
    }

    fn run(
        &mut self,
        content: &[u8],
        resources: &[&'a Dictionary],
        mut gs: GState,
        depth: u32,
    ) -> Result<(), ExtractError> {
        // a broken content stream yields what could be read of it
        let ops = match Content::decode(content) {
            Ok(c) => c.operations,
            Err(_) => return Ok(()),
        };
        let mut stack: Vec<GState> = Vec::new();
        let mut tm = Matrix::IDENTITY;
        let mut tlm = Matrix::IDENTITY;
        for op in &ops {
            self.ops += 1;
            if self.ops.is_multiple_of(4096) && Instant::now() > self.deadline {
                return Err(ExtractError::Timeout);
            }
            if self.ops > self.limits.max_ops_per_page {
                return Err(ExtractError::too_complex("a page has too many drawing operations"));
            }
            if self.glyphs.len() + self.unmapped > self.limits.max_glyphs_per_page {
                return Err(ExtractError::too_complex("a page has too many characters"));
            }
            let n = |i: usize| op.operands.get(i).and_then(num).unwrap_or(0.0);
            match op.operator.as_str() {
                "q" if stack.len() < 64 => {
                    stack.push(gs.clone());
                }
                "Q" => {
                    if let Some(s) = stack.pop() {
                        gs = s;
                    }
                }
                "cm" => gs.ctm = Matrix([n(0), n(1), n(2), n(3), n(4), n(5)]).then(gs.ctm),
                "BT" => {
                    tm = Matrix::IDENTITY;
                    tlm = Matrix::IDENTITY;
                }
                "Tf" => {
                    gs.font = op.operands.first().and_then(|o| o.as_name().ok()).map(<[u8]>::to_vec);
                    gs.size = n(1);
                }
                "Tc" => gs.char_spacing = n(0),
                "Tw" => gs.word_spacing = n(0),
                "Tz" => gs.h_scale = n(0) / 100.0,
                "TL" => gs.leading = n(0),
                "Ts" => gs.rise = n(0),
                "Td" => {
                    tlm = Matrix::translate(n(0), n(1)).then(tlm);
                    tm = tlm;
                }
                "TD" => {
                    gs.leading = -n(1);
                    tlm = Matrix::translate(n(0), n(1)).then(tlm);
                    tm = tlm;
                }
                "Tm" => {
                    tlm = Matrix([n(0), n(1), n(2), n(3), n(4), n(5)]);
                    tm = tlm;
                }
                "T*" => {
                    tlm = Matrix::translate(0.0, -gs.leading).then(tlm);
                    tm = tlm;
                }
                "Tj" => {
                    if let Some(Object::String(s, _)) = op.operands.first() {
                        self.show(s, resources, &gs, &mut tm);
                    }
                }
                "'" => {
                    tlm = Matrix::translate(0.0, -gs.leading).then(tlm);
                    tm = tlm;
                    if let Some(Object::String(s, _)) = op.operands.first() {
                        self.show(s, resources, &gs, &mut tm);
                    }
                }
                "\"" => {
                    gs.word_spacing = n(0);
                    gs.char_spacing = n(1);
                    tlm = Matrix::translate(0.0, -gs.leading).then(tlm);
                    tm = tlm;
                    if let Some(Object::String(s, _)) = op.operands.get(2) {
                        self.show(s, resources, &gs, &mut tm);
                    }
                }
                "TJ" => {
                    if let Some(Object::Array(items)) = op.operands.first() {
                        for item in items {
                            match item {
                                Object::String(s, _) => self.show(s, resources, &gs, &mut tm),
                                other => {
                                    if let Some(adj) = num(other) {
                                        let tx = -adj / 1000.0 * gs.size * gs.h_scale;
                                        tm = Matrix::translate(tx, 0.0).then(tm);
                                    }
                                }
                            }
                        }
                    }
                }
                "Do" if depth < self.limits.max_form_depth => {
                    let Some(name) = op.operands.first().and_then(|o| o.as_name().ok()) else { continue };
                    self.form(name, resources, &gs, depth)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn form(&mut self, name: &[u8], resources: &[&'a Dictionary], gs: &GState, depth: u32) -> Result<(), ExtractError> {
        let doc = self.doc;
        let Some(stream) = resources.iter().find_map(|r| {
            let xobjects =
                r.get(b"XObject").ok().and_then(|o| doc.dereference(o).ok()).and_then(|(_, o)| o.as_dict().ok())?;
            let (_, obj) = doc.dereference(xobjects.get(name).ok()?).ok()?;
            obj.as_stream().ok()
        }) else {
            return Ok(());
        };
        if stream.dict.get(b"Subtype").and_then(Object::as_name).ok() != Some(b"Form".as_slice()) {
            return Ok(());
        }
        let content = if stream.dict.get(b"Filter").is_ok() {
            // inflated only up to the cap (a form whose content inflates through two filters
            // had grown to gigabytes before any check)
            match stream.decompressed_content_with_limit(self.limits.max_content_bytes) {
                Ok(c) => c,
                Err(_) => return Ok(()),
            }
        } else {
            stream.content.clone()
        };
        let matrix = stream
            .dict
            .get(b"Matrix")
            .ok()
            .and_then(|o| o.as_array().ok())
            .filter(|a| a.len() == 6)
            .map(|a| Matrix(std::array::from_fn(|i| num(&a[i]).unwrap_or(0.0))))
            .unwrap_or(Matrix::IDENTITY);
        let mut inner: Vec<&'a Dictionary> = Vec::new();
        if let Some(own) =
            stream.dict.get(b"Resources").ok().and_then(|o| doc.dereference(o).ok()).and_then(|(_, o)| o.as_dict().ok())
        {
            inner.push(own);
        }
        inner.extend_from_slice(resources);
        let mut gs = gs.clone();
        gs.ctm = matrix.then(gs.ctm);
        self.run(&content, &inner, gs, depth + 1)
    }

    fn font_for(&mut self, name: &[u8], resources: &[&'a Dictionary]) -> Option<&Font<'a>> {
        let doc = self.doc;
        for r in resources {
            let Some(fonts) =
                r.get(b"Font").ok().and_then(|o| doc.dereference(o).ok()).and_then(|(_, o)| o.as_dict().ok())
            else {
                continue;
            };
            let Ok(entry) = fonts.get(name) else { continue };
            return match entry {
                Object::Reference(id) => {
                    let id = *id;
                    if let std::collections::hash_map::Entry::Vacant(e) = self.fonts.entry(id) {
                        let dict = doc.get_dictionary(id).ok()?;
                        e.insert(Font::load(doc, dict));
                    }
                    self.fonts.get(&id)
                }
                Object::Dictionary(dict) => {
                    if !self.inline_fonts.contains_key(name) {
                        self.inline_fonts.insert(name.to_vec(), Font::load(doc, dict));
                    }
                    self.inline_fonts.get(name)
                }
                _ => None,
            };
        }
        None
    }

    fn show(&mut self, bytes: &[u8], resources: &[&'a Dictionary], gs: &GState, tm: &mut Matrix) {
        let Some(name) = gs.font.clone() else { return };
        let room = self.limits.max_glyphs_per_page.saturating_sub(self.glyphs.len() + self.unmapped) + 1;
        let Some(font) = self.font_for(&name, resources) else { return };
        // the glyph budget counts inside one string too: no more of it is read than could still
        // be placed (a code is at most 4 bytes), so one operator with a 20 MB string costs no more
        // than the page's limit; one glyph past it makes the page too complex
        let codes = font.codes(&bytes[..bytes.len().min(room.saturating_mul(4))]);
        let mut placed = Vec::with_capacity(codes.len().min(room));
        let mut unmapped = 0;
        for code in codes.into_iter().take(room) {
            let m = tm.then(gs.ctm);
            let trm = Matrix([gs.size * gs.h_scale, 0.0, 0.0, gs.size, 0.0, gs.rise]).then(m);
            let space_code = font.is_space_code(code);
            let advance = font.advance(code);
            let tx =
                (advance * gs.size + gs.char_spacing + if space_code { gs.word_spacing } else { 0.0 }) * gs.h_scale;
            let (x0, y0) = (trm.0[4], trm.0[5]);
            let (x1, y1) = m.apply(tx, gs.rise);
            let size = (trm.0[2] * trm.0[2] + trm.0[3] * trm.0[3]).sqrt();
            let (dx, dy) = (x1 - x0, y1 - y0);
            let quarter = quarter_of(trm.0[0], trm.0[1]);
            match font.text(code) {
                Some(text) => {
                    let space = text.chars().all(char::is_whitespace);
                    let width = (dx * dx + dy * dy).sqrt();
                    placed.push(Glyph { x: x0, y: y0, width, size, quarter, text, space });
                }
                None => unmapped += 1,
            }
            *tm = Matrix::translate(tx, 0.0).then(*tm);
        }
        self.unmapped += unmapped;
        self.glyphs.extend(placed);
    }
}

fn quarter_of(a: f32, b: f32) -> u8 {
    let angle = b.atan2(a).to_degrees();
    let q = ((angle + 360.0 + 45.0) % 360.0 / 90.0) as u8;
    q % 4
}

fn num(o: &Object) -> Option<f32> {
    match o {
        Object::Integer(i) => Some(*i as f32),
        Object::Real(r) => Some(*r),
        _ => None,
    }
}

/// The page's resource dictionaries, nearest first (a page inherits from its ancestors).
fn page_resources(doc: &Document, page: ObjectId) -> Vec<&Dictionary> {
    match doc.get_page_resources(page) {
        Ok((own, inherited)) => {
            own.into_iter().chain(inherited.into_iter().filter_map(|id| doc.get_dictionary(id).ok())).collect()
        }
        Err(_) => Vec::new(),
    }
}
