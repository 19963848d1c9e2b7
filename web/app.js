// DocuChat web app: log in by e-mail code, upload PDFs and follow their ingestion, chat over the
// WebSocket with streamed answers and cited sources, usage for admins; English and Persian.
//
// Plain DOM, no framework, no build step. Everything that came from a document, a model or the
// server is written with textContent (never parsed as markup); the page's Content-Security-Policy
// allows no inline script and no other origin.

'use strict';

const I18N = {
  en: {
    language: 'Language', logout: 'Log out', login_title: 'Log in', login_hint: 'We e-mail you a 6-digit code.',
    tenant: 'Workspace', email: 'E-mail', request_code: 'Send me a code', code: 'Code', verify_code: 'Log in',
    other_address: 'Use another address', code_sent: 'If {email} may log in to {tenant}, a code is on its way. It is valid for {minutes} minutes.',
    sessions: 'Conversations', new_session: 'New', chat: 'Chat', chat_empty: 'Ask a question about your documents.',
    ask: 'Ask', cancel: 'Stop', question_placeholder: 'Ask a question… (Enter sends, Shift+Enter starts a new line)',
    documents: 'Documents', choose_files: 'Choose PDFs', or_drop: 'or drop them here', no_documents: 'No documents yet.',
    more: 'More', usage: 'Usage', embedding: 'Embedding', prompt: 'Prompt', completion: 'Answer', total: 'Total',
    from: 'From', to: 'To', by_day: 'By day', day: 'Day', last_24h: 'Last 24 hours', last_7d: 'Last 7 days',
    delete: 'Delete', delete_document: 'Delete “{name}”? Its chunks go with it.', delete_session: 'Delete this conversation?',
    st_queued: 'queued', st_processing: 'processing', st_ready: 'ready', st_failed: 'failed',
    stage_queued: 'Waiting to start', stage_extracting: 'Reading pages {done} of {total}',
    stage_embedding: 'Embedding chunks {done} of {total}', stage_storing: 'Storing {total} chunks',
    ready_detail: '{pages} pages · {chunks} chunks', uploading: 'Uploading {percent}%', upload_checking: 'Checking the file…',
    duplicate: 'Already uploaded: the existing document is shown.', dismiss: 'Dismiss',
    sources: 'Sources', page: 'p. {page}', pages: 'pp. {from}–{to}', open_page: 'Open page',
    streaming: 'Answering…', cancelled: 'Stopped.', tokens_used: '{total} tokens', answer_failed: 'The answer failed.',
    retry_in: 'Try again in {seconds} s.', resets_at: 'It resets {when}.', network: 'The server cannot be reached. Check the connection and try again.',
    connection_lost: 'The connection to the server was lost. Ask again to reconnect.', session_expired: 'Your session has ended. Log in again.',
    not_pdf: '{name}: Only PDF files can be uploaded.', untitled: 'Untitled',
    err_invalid_code: 'That code is wrong, expired or already used.', err_too_many_attempts: 'Too many wrong codes: ask for a new one.',
    err_invalid_email: 'That is not an e-mail address.', err_tenant_not_found: 'There is no workspace with that name.',
    err_tenant_required: 'Enter your workspace.', err_rate_limited: 'Too many requests.',
    err_quota_exceeded: 'The token quota is used up.', err_upstream_unavailable: 'The language model is unavailable right now.',
    err_upstream_rate_limited: 'The language model is busy.', err_embedding_unavailable: 'Questions cannot be searched right now.',
    err_service_unavailable: 'The service is unavailable right now.', err_busy: 'An answer is still in progress.',
    err_file_too_large: 'The file is too large.', err_encrypted_pdf: 'The PDF is encrypted.', err_too_many_pages: 'The PDF has too many pages.',
    err_invalid_pdf: 'The file is not a readable PDF.', err_no_text: 'The PDF has no text layer (a scan?).',
    err_forbidden: 'Only admins can do that.', err_question_too_long: 'The question is too long.',
  },
  fa: {
    language: 'زبان', logout: 'خروج', login_title: 'ورود', login_hint: 'یک کد ۶ رقمی برایتان ایمیل می‌کنیم.',
    tenant: 'فضای کاری', email: 'ایمیل', request_code: 'کد را بفرست', code: 'کد', verify_code: 'ورود',
    other_address: 'نشانی دیگر', code_sent: 'اگر {email} اجازهٔ ورود به {tenant} را داشته باشد، کدی در راه است. این کد {minutes} دقیقه معتبر است.',
    sessions: 'گفتگوها', new_session: 'جدید', chat: 'گفتگو', chat_empty: 'دربارهٔ اسنادتان بپرسید.',
    ask: 'بپرس', cancel: 'توقف', question_placeholder: 'پرسش خود را بنویسید… (Enter می‌فرستد، Shift+Enter خط تازه)',
    documents: 'اسناد', choose_files: 'انتخاب PDF', or_drop: 'یا آن‌ها را اینجا رها کنید', no_documents: 'هنوز سندی نیست.',
    more: 'بیشتر', usage: 'مصرف', embedding: 'بردارسازی', prompt: 'پرسش', completion: 'پاسخ', total: 'جمع',
    from: 'از', to: 'تا', by_day: 'روزانه', day: 'روز', last_24h: '۲۴ ساعت گذشته', last_7d: '۷ روز گذشته',
    delete: 'حذف', delete_document: '«{name}» حذف شود؟ بخش‌های آن هم حذف می‌شوند.', delete_session: 'این گفتگو حذف شود؟',
    st_queued: 'در صف', st_processing: 'در حال پردازش', st_ready: 'آماده', st_failed: 'ناموفق',
    stage_queued: 'در انتظار شروع', stage_extracting: 'خواندن صفحهٔ {done} از {total}',
    stage_embedding: 'بردارسازی بخش {done} از {total}', stage_storing: 'ذخیرهٔ {total} بخش',
    ready_detail: '{pages} صفحه · {chunks} بخش', uploading: 'بارگذاری {percent}٪', upload_checking: 'بررسی پرونده…',
    duplicate: 'پیش‌تر بارگذاری شده است: همان سند نمایش داده می‌شود.', dismiss: 'بستن',
    sources: 'منابع', page: 'ص {page}', pages: 'صص {from}–{to}', open_page: 'باز کردن صفحه',
    streaming: 'در حال پاسخ…', cancelled: 'متوقف شد.', tokens_used: '{total} توکن', answer_failed: 'پاسخ ناموفق بود.',
    retry_in: '{seconds} ثانیهٔ دیگر دوباره تلاش کنید.', resets_at: 'در {when} از نو شروع می‌شود.', network: 'به سرور دسترسی نیست. اتصال را بررسی کنید و دوباره تلاش کنید.',
    connection_lost: 'اتصال به سرور قطع شد. دوباره بپرسید تا وصل شود.', session_expired: 'نشست شما پایان یافت. دوباره وارد شوید.',
    not_pdf: '{name}: فقط پرونده‌های PDF بارگذاری می‌شوند.', untitled: 'بی‌عنوان',
    err_invalid_code: 'این کد نادرست، منقضی یا استفاده‌شده است.', err_too_many_attempts: 'کدهای نادرست زیاد بود: کد تازه بخواهید.',
    err_invalid_email: 'این نشانی ایمیل نیست.', err_tenant_not_found: 'فضای کاری با این نام نیست.',
    err_tenant_required: 'فضای کاری را وارد کنید.', err_rate_limited: 'درخواست‌ها بیش از حد است.',
    err_quota_exceeded: 'سهمیهٔ توکن تمام شده است.', err_upstream_unavailable: 'مدل زبانی اکنون در دسترس نیست.',
    err_upstream_rate_limited: 'مدل زبانی مشغول است.', err_embedding_unavailable: 'اکنون جستجوی پرسش ممکن نیست.',
    err_service_unavailable: 'سرویس اکنون در دسترس نیست.', err_busy: 'پاسخی هنوز در جریان است.',
    err_file_too_large: 'پرونده بیش از حد بزرگ است.', err_encrypted_pdf: 'این PDF رمزگذاری شده است.', err_too_many_pages: 'این PDF صفحه‌های بیش از حد دارد.',
    err_invalid_pdf: 'این پرونده PDF خوانایی نیست.', err_no_text: 'این PDF لایهٔ متن ندارد (اسکن شده؟).',
    err_forbidden: 'فقط مدیران می‌توانند این کار را بکنند.', err_question_too_long: 'پرسش بیش از حد بلند است.',
  },
};

const $ = (id) => document.getElementById(id);
const KEY_AUTH = 'docuchat.auth';
const KEY_LANG = 'docuchat.lang';

let lang = localStorage.getItem(KEY_LANG) || ((navigator.language || '').startsWith('fa') ? 'fa' : 'en');
/** @type {{tenant: string, token: string, email: string} | null} */
let auth = readAuth();
let me = null;

function readAuth() {
  try {
    const a = JSON.parse(localStorage.getItem(KEY_AUTH) || 'null');
    return a && typeof a.token === 'string' && typeof a.tenant === 'string' ? a : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- language

function t(key, vars = {}) {
  const s = (I18N[lang] && I18N[lang][key]) || I18N.en[key] || key;
  return s.replace(/\{(\w+)\}/g, (_, k) => (k in vars ? String(vars[k]) : ''));
}

function num(n) {
  return new Intl.NumberFormat(lang === 'fa' ? 'fa-IR' : 'en-US').format(n);
}

function when(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return new Intl.DateTimeFormat(lang === 'fa' ? 'fa-IR' : 'en-GB', { dateStyle: 'medium', timeStyle: 'short' }).format(d);
}

function applyLanguage() {
  const root = document.documentElement;
  root.lang = lang;
  root.dir = lang === 'fa' ? 'rtl' : 'ltr';
  $('language').value = lang;
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  $('question').placeholder = t('question_placeholder');
  // what is drawn from data is drawn again in the new language
  if (me) {
    renderDocuments();
    renderSessions();
    renderUsage();
    for (const m of messages) renderMessage(m);
  }
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, code, message, extra = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = extra.retryAfter ?? null;
    this.resetsAt = extra.resetsAt ?? null;
  }
}

/** One sentence for people: in English the server's own (it says what exactly), in Persian the
 *  translation of its code where there is one; with the time to wait when there is one. */
function describe(err) {
  if (!err) return t('answer_failed');
  const code = err.code;
  const translated = code && I18N[lang]['err_' + code] ? t('err_' + code) : '';
  let text;
  if (code === 'network' || code === 'connection_lost') text = err.message || t('network');
  else if (lang !== 'en' && translated) text = translated;
  else text = err.message || translated || code || t('answer_failed');
  if (err.resetsAt) {
    // a quota: the time it resets, in the reader's own time (the server's sentence gives it in UTC)
    text = sentence(text.replace(/;\s*it resets at \S+$/, '')) + ' ' + t('resets_at', { when: when(err.resetsAt) });
  } else if (err.retryAfter != null && Number(err.retryAfter) > 0) {
    // the server's sentence may name the wait itself: it is said once, in the reader's language
    text = sentence(text.replace(/[:;,]?\s*try again in \d+ ?s$/i, '')) + ' ' + t('retry_in', { seconds: num(Math.ceil(Number(err.retryAfter))) });
  } else {
    text = sentence(text);
  }
  return text;
}

/** The server's messages are sentences without their capital and full stop. */
function sentence(s) {
  const t = s.trim();
  if (!t) return t;
  const first = /^[a-z]/.test(t) ? t[0].toUpperCase() + t.slice(1) : t;
  return /[.!?…؟]$/.test(first) ? first : first + '.';
}

function headers(extra = {}) {
  const h = { 'X-Tenant-ID': auth ? auth.tenant : '', ...extra };
  if (auth && auth.token) h.Authorization = 'Bearer ' + auth.token;
  return h;
}

async function api(method, path, { json, tenant } = {}) {
  const h = headers(json !== undefined ? { 'Content-Type': 'application/json' } : {});
  if (tenant) h['X-Tenant-ID'] = tenant;
  let resp;
  try {
    resp = await fetch(path, { method, headers: h, body: json !== undefined ? JSON.stringify(json) : undefined });
  } catch {
    throw new ApiError(0, 'network', t('network'));
  }
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw apiError(resp.status, data, resp.headers.get('Retry-After'));
  return data;
}

function apiError(status, data, retryAfter) {
  const e = (data && data.error) || { code: 'http_' + status, message: 'HTTP ' + status };
  const err = new ApiError(status, e.code, e.message, { retryAfter, resetsAt: e.resets_at });
  // a token that no longer works ends the session here too
  if (status === 401 && auth && auth.token) setTimeout(() => loggedOut(t('session_expired')), 0);
  return err;
}

function show(el, text) {
  el.textContent = text || '';
  el.hidden = !text;
}

// ---------------------------------------------------------------- logging in and out

let pendingEmail = '';

async function requestCode() {
  const tenant = $('tenant').value.trim();
  const email = $('email').value.trim();
  show($('login-error'), '');
  if (!tenant) return show($('login-error'), t('err_tenant_required'));
  $('request-code').disabled = true;
  try {
    const sent = await api('POST', '/v1/auth/request-code', { json: { email }, tenant });
    pendingEmail = email;
    $('code-sent').textContent = t('code_sent', { email, tenant, minutes: num(Math.round((sent.expires_in || 600) / 60)) });
    $('login-step-email').hidden = true;
    $('login-step-code').hidden = false;
    $('code').value = '';
    $('code').focus();
  } catch (e) {
    show($('login-error'), describe(e));
  } finally {
    $('request-code').disabled = false;
  }
}

async function verifyCode() {
  const tenant = $('tenant').value.trim();
  show($('login-error'), '');
  $('verify-code').disabled = true;
  try {
    const tok = await api('POST', '/v1/auth/verify-code', { json: { email: pendingEmail, code: $('code').value.trim() }, tenant });
    auth = { tenant, token: tok.access_token, email: pendingEmail };
    localStorage.setItem(KEY_AUTH, JSON.stringify(auth));
    await start();
  } catch (e) {
    show($('login-error'), describe(e));
  } finally {
    $('verify-code').disabled = false;
  }
}

async function logout() {
  try {
    if (auth) await api('POST', '/v1/auth/logout');
  } catch {
    // the token is forgotten here whatever the server said
  }
  loggedOut('');
}

function loggedOut(why) {
  const tenant = auth ? auth.tenant : $('tenant').value;
  auth = null;
  me = null;
  localStorage.removeItem(KEY_AUTH);
  closeSocket();
  clearInterval(pollTimer);
  pollTimer = null;
  documents = [];
  sessions = [];
  messages = [];
  $('messages').replaceChildren();
  $('tenant').value = tenant || '';
  $('login-step-email').hidden = false;
  $('login-step-code').hidden = true;
  show($('login-error'), why);
  showView();
}

function showView() {
  const inside = !!me;
  $('login-view').hidden = inside;
  $('app-view').hidden = !inside;
  $('logout').hidden = !inside;
  $('who').hidden = !inside;
  if (inside) $('who').textContent = `${me.user.email} · ${me.tenant.name}`;
}

const isAdmin = () => !!me && me.user.role === 'admin';

async function start() {
  try {
    me = await api('GET', '/v1/me');
  } catch (e) {
    if (e.status !== 401) show($('login-error'), describe(e));
    me = null;
    showView();
    return;
  }
  showView();
  $('upload').hidden = !isAdmin();
  $('usage-section').hidden = !isAdmin();
  newSession();
  await Promise.all([loadDocuments(), loadSessions(), isAdmin() ? loadUsage() : null]);
}

// ---------------------------------------------------------------- documents

let documents = [];
let nextDocuments = null;
let pollTimer = null;
const POLL_MS = 1000;

const isBusy = (d) => d.status === 'queued' || d.status === 'processing';

async function loadDocuments(more = false) {
  const wasBusy = new Set(documents.filter(isBusy).map((d) => d.id));
  try {
    const q = more && nextDocuments ? `&after=${encodeURIComponent(nextDocuments)}` : '';
    const page = await api('GET', '/v1/documents?limit=50' + q);
    documents = more ? documents.concat(page.documents) : page.documents;
    nextDocuments = page.next_cursor;
  } catch {
    // a failed read leaves the list as it was (a 401 has already logged the person out)
    return;
  }
  renderDocuments();
  schedulePoll();
  // a document that has finished has had its embedding tokens metered
  if (isAdmin() && documents.some((d) => wasBusy.has(d.id) && !isBusy(d))) loadUsage();
}

/** While a document is on its way, the list is read again every second: progress needs no
 *  open connection per document (a browser keeps only six per server). */
function schedulePoll() {
  const busy = documents.some(isBusy);
  if (busy && !pollTimer) {
    pollTimer = setInterval(() => {
      if (!document.hidden) loadDocuments();
    }, POLL_MS);
  } else if (!busy && pollTimer) {
    clearInterval(pollTimer);
    pollTimer = null;
  }
}

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-') || k === 'dir' || k === 'title' || k === 'type' || k === 'aria-label') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function stageText(d) {
  const p = d.progress || {};
  switch (p.stage) {
    case 'queued': return t('stage_queued');
    case 'extracting': return t('stage_extracting', { done: num(p.pages_done), total: num(p.pages_total) });
    case 'embedding': return t('stage_embedding', { done: num(p.chunks_embedded), total: num(p.chunks_total) });
    case 'storing': return t('stage_storing', { total: num(p.chunks_total) });
    default: return '';
  }
}

function progressValue(d) {
  const p = d.progress || {};
  // extraction is the first third of the bar, embedding the rest
  if (p.stage === 'extracting' && p.pages_total) return (p.pages_done / p.pages_total) / 3;
  if (p.stage === 'embedding' && p.chunks_total) return 1 / 3 + (2 / 3) * (p.chunks_embedded / p.chunks_total);
  if (p.stage === 'storing') return 0.98;
  return 0;
}

function renderDocuments() {
  const list = $('documents');
  list.replaceChildren(
    ...documents.map((d) => {
      const row = el('li', { 'data-testid': 'document-row', 'data-status': d.status, 'data-id': d.id });
      const head = el('div', { class: 'doc-head' },
        el('span', { class: 'doc-name', dir: 'auto', text: d.filename }),
        el('span', { class: 'badge ' + d.status, text: t('st_' + d.status) }));
      if (isAdmin()) {
        head.append(el('button', { type: 'button', class: 'link danger', text: t('delete'), 'data-testid': 'delete-document', onclick: () => deleteDocument(d) }));
      }
      row.append(head);
      if (d.status === 'ready') {
        row.append(el('div', { class: 'doc-detail', text: t('ready_detail', { pages: num(d.pages_total), chunks: num(d.chunk_count) }) }));
      } else if (d.status === 'failed') {
        row.append(el('div', { class: 'doc-error', dir: 'auto', text: describe(d.error || {}) }));
      } else {
        row.append(el('div', { class: 'doc-detail', text: stageText(d) }));
        if (d.error) row.append(el('div', { class: 'doc-detail', dir: 'auto', text: describe(d.error) }));
        row.append(el('progress', { max: 1, value: progressValue(d) }));
      }
      return row;
    }),
  );
  $('docs-empty').hidden = documents.length > 0 || $('uploads').children.length > 0;
  $('more-documents').hidden = !nextDocuments;
}

async function deleteDocument(d) {
  if (!confirm(t('delete_document', { name: d.filename }))) return;
  try {
    await api('DELETE', `/v1/documents/${encodeURIComponent(d.id)}`);
    documents = documents.filter((x) => x.id !== d.id);
    renderDocuments();
  } catch (e) {
    alert(describe(e));
  }
}

// uploads go one at a time, each with its own progress row
const uploadQueue = [];
let uploading = false;

function addFiles(files) {
  for (const f of files) {
    const row = el('li', { 'data-testid': 'upload-row' });
    const name = el('div', { class: 'doc-name', dir: 'auto', text: f.name });
    const status = el('div', { class: 'doc-detail', text: t('uploading', { percent: num(0) }) });
    const bar = el('progress', { max: 1, value: 0 });
    row.append(name, status, bar);
    $('uploads').append(row);
    if (!/\.pdf$/i.test(f.name) && f.type !== 'application/pdf') {
      failUpload(row, t('not_pdf', { name: f.name }));
      continue;
    }
    uploadQueue.push({ file: f, row, status, bar });
  }
  renderDocuments();
  pumpUploads();
}

function failUpload(row, text) {
  row.querySelector('progress')?.remove();
  const detail = row.querySelector('.doc-detail');
  detail.className = 'doc-error';
  detail.textContent = text;
  row.append(el('button', { type: 'button', class: 'link', text: t('dismiss'), onclick: () => { row.remove(); renderDocuments(); } }));
}

function pumpUploads() {
  if (uploading) return;
  const job = uploadQueue.shift();
  if (!job) return;
  uploading = true;
  const xhr = new XMLHttpRequest();
  xhr.open('POST', '/v1/files');
  for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (ev) => {
    if (!ev.lengthComputable) return;
    job.bar.value = ev.loaded / ev.total;
    job.status.textContent = ev.loaded < ev.total ? t('uploading', { percent: num(Math.floor((100 * ev.loaded) / ev.total)) }) : t('upload_checking');
  };
  const finish = () => {
    uploading = false;
    pumpUploads();
  };
  xhr.onload = () => {
    let data = null;
    try {
      data = JSON.parse(xhr.responseText);
    } catch {
      // not JSON: described by its status below
    }
    if (xhr.status >= 200 && xhr.status < 300) {
      job.row.remove();
      if (data && data.duplicate) {
        const note = el('li', { class: 'doc-detail', text: `${job.file.name}: ${t('duplicate')}` });
        $('uploads').append(note);
        setTimeout(() => note.remove(), 5000);
      }
      loadDocuments();
    } else {
      failUpload(job.row, `${job.file.name}: ${describe(apiError(xhr.status, data, xhr.getResponseHeader('Retry-After')))}`);
    }
    finish();
  };
  xhr.onerror = () => {
    failUpload(job.row, `${job.file.name}: ${t('network')}`);
    finish();
  };
  const form = new FormData();
  form.append('file', job.file, job.file.name);
  xhr.send(form);
}

// ---------------------------------------------------------------- usage (admins)

let usage = null;
let usageDays = null;

async function loadUsage() {
  try {
    usage = await api('GET', '/v1/usage');
    show($('usage-error'), '');
  } catch (e) {
    show($('usage-error'), describe(e));
  }
  renderUsage();
  // a range being shown is read again with the windows
  if (usageDays) loadUsageDays();
}

async function loadUsageDays() {
  const from = $('usage-from').value;
  const to = $('usage-to').value;
  if (!from || !to) return;
  const end = new Date(to + 'T00:00:00Z');
  end.setUTCDate(end.getUTCDate() + 1);
  const q = new URLSearchParams({ from: from + 'T00:00:00Z', to: end.toISOString(), group_by: 'day' });
  try {
    const u = await api('GET', '/v1/usage?' + q);
    usageDays = u.range;
    show($('usage-error'), '');
  } catch (e) {
    usageDays = null;
    show($('usage-error'), describe(e));
  }
  renderUsage();
}

function totalsRow(label, tot) {
  return el('tr', {}, el('td', { text: label }), ...['embedding', 'prompt', 'completion', 'total'].map((k) => el('td', { text: num(tot[k] || 0) })));
}

function renderUsage() {
  if (usage) $('usage-windows').replaceChildren(totalsRow(t('last_24h'), usage.last_24h), totalsRow(t('last_7d'), usage.last_7d));
  const table = $('usage-days');
  table.hidden = !usageDays;
  if (usageDays) {
    const rows = (usageDays.buckets || []).map((b) => totalsRow(b.day, b.totals));
    rows.push(totalsRow(t('total'), usageDays.totals));
    table.tBodies[0].replaceChildren(...rows);
  }
}

// ---------------------------------------------------------------- chat sessions

let sessions = [];
let currentSession = null;

async function loadSessions() {
  try {
    sessions = (await api('GET', '/v1/chat/sessions')).sessions;
  } catch {
    return;
  }
  renderSessions();
}

function renderSessions() {
  $('session-list').replaceChildren(
    ...sessions.map((s) =>
      el('li', { 'data-testid': 'session', 'data-id': s.id, class: s.id === currentSession ? 'current' : '' },
        el('button', { type: 'button', class: 'open', dir: 'auto', title: s.title, text: s.title || t('untitled'), onclick: () => openSession(s.id) }),
        el('button', { type: 'button', class: 'delete', 'aria-label': t('delete'), title: t('delete'), text: '×', onclick: () => deleteSession(s.id) })),
    ),
  );
}

function newSession() {
  if (turn) return;
  currentSession = null;
  messages = [];
  $('messages').replaceChildren();
  $('chat-empty').hidden = false;
  renderSessions();
  $('question').focus();
}

async function openSession(id) {
  if (turn) return;
  try {
    const list = await api('GET', `/v1/chat/sessions/${encodeURIComponent(id)}/messages`);
    currentSession = id;
    messages = list.messages.map((m) => ({
      question: m.question,
      text: m.answer,
      sources: m.sources || [],
      state: m.status === 'failed' ? 'error' : 'done',
      status: m.status,
      error: m.error_code ? { code: m.error_code } : null,
      usage: { total_tokens: (m.prompt_tokens || 0) + (m.completion_tokens || 0) },
      node: null,
    }));
    $('messages').replaceChildren();
    for (const m of messages) renderMessage(m);
    $('chat-empty').hidden = messages.length > 0;
    renderSessions();
    scrollDown();
  } catch (e) {
    show($('chat-error'), describe(e));
  }
}

async function deleteSession(id) {
  if (!confirm(t('delete_session'))) return;
  try {
    await api('DELETE', `/v1/chat/sessions/${encodeURIComponent(id)}`);
  } catch (e) {
    if (e.status !== 404) return show($('chat-error'), describe(e));
  }
  sessions = sessions.filter((s) => s.id !== id);
  if (currentSession === id) newSession();
  renderSessions();
}

// ---------------------------------------------------------------- the chat socket

let socket = null;
let socketReady = null;
/** the question being answered: one at a time per socket */
let turn = null;
let messages = [];

function closeSocket() {
  if (socket) {
    socket.onclose = null;
    socket.close();
  }
  socket = null;
  socketReady = null;
}

function connect() {
  if (socketReady) return socketReady;
  const url = new URL('/ws/chat', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  // a browser cannot set headers on a WebSocket: the token goes in the query
  url.searchParams.set('token', auth.token);
  const ws = new WebSocket(url);
  socket = ws;
  socketReady = new Promise((resolve, reject) => {
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new ApiError(0, 'network', t('connection_lost')));
  });
  ws.onmessage = (ev) => onFrame(ev.data);
  ws.onclose = () => {
    if (socket !== ws) return;
    socket = null;
    socketReady = null;
    if (turn) failTurn({ code: 'connection_lost', message: t('connection_lost') });
  };
  return socketReady;
}

async function ask() {
  const q = $('question').value.trim();
  if (!q || turn) return;
  show($('chat-error'), '');
  const m = { question: q, text: '', sources: [], state: 'streaming', status: '', error: null, usage: null, node: null };
  messages.push(m);
  turn = m;
  $('chat-empty').hidden = true;
  renderMessage(m);
  scrollDown();
  setAsking(true);
  $('question').value = '';
  try {
    const ws = await connect();
    ws.send(JSON.stringify({ type: 'ask', session_id: currentSession, content: q }));
  } catch (e) {
    failTurn({ code: 'network', message: describe(e) });
    // the socket may have been refused because the token no longer works
    api('GET', '/v1/me').catch(() => {});
  }
}

function cancel() {
  if (turn && socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: 'cancel' }));
}

function setAsking(on) {
  $('ask').disabled = on;
  $('cancel').hidden = !on;
  $('new-session').disabled = on;
}

function failTurn(err) {
  if (!turn) return;
  turn.state = 'error';
  turn.error = err;
  renderMessage(turn);
  turn = null;
  setAsking(false);
  // a failed answer is saved in its conversation too, and what it spent is metered
  loadSessions();
  if (isAdmin()) loadUsage();
}

function onFrame(raw) {
  let f;
  try {
    f = JSON.parse(raw);
  } catch {
    return;
  }
  if (f.type === 'error' && !turn) {
    // a frame about the socket itself (expired token, shutting down)
    if (['token_expired', 'token_revoked', 'access_revoked'].includes(f.code)) loggedOut(t('session_expired'));
    else show($('chat-error'), describe({ code: f.code, message: f.message, retryAfter: f.retry_after, resetsAt: f.resets_at }));
    return;
  }
  const m = turn;
  if (!m) return;
  switch (f.type) {
    case 'start':
      if (currentSession !== f.session_id) {
        currentSession = f.session_id;
        loadSessions();
      }
      break;
    case 'sources':
      m.sources = f.sources || [];
      renderMessage(m);
      break;
    case 'token':
      m.text += f.content || '';
      scheduleRender(m);
      break;
    case 'done':
      m.state = 'done';
      m.status = f.status;
      m.usage = f.usage;
      renderMessage(m);
      turn = null;
      setAsking(false);
      loadSessions();
      if (isAdmin()) loadUsage();
      break;
    case 'error':
      failTurn({ code: f.code, message: f.message, retryAfter: f.retry_after, resetsAt: f.resets_at });
      if (['token_expired', 'token_revoked', 'access_revoked'].includes(f.code)) loggedOut(t('session_expired'));
      break;
  }
}

// tokens arrive faster than frames are drawn: one redraw per frame
let renderPending = null;
function scheduleRender(m) {
  if (renderPending) return;
  renderPending = requestAnimationFrame(() => {
    renderPending = null;
    renderMessage(m);
    scrollDown();
  });
}

function scrollDown() {
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
}

/** The answer's text with each `[n]` that names a source turned into a button showing it. */
function answerNodes(m) {
  const out = [];
  const re = /\[(\d{1,3})\]/g;
  let last = 0;
  let match;
  while ((match = re.exec(m.text))) {
    const n = Number(match[1]);
    if (n < 1 || n > m.sources.length) continue;
    if (match.index > last) out.push(document.createTextNode(m.text.slice(last, match.index)));
    const s = m.sources[n - 1];
    out.push(el('button', { type: 'button', class: 'cite', text: `[${n}]`, title: `${s.filename} · ${pageText(s)}`, 'data-testid': 'citation', onclick: () => showSource(m, n - 1) }));
    last = match.index + match[0].length;
  }
  if (last < m.text.length) out.push(document.createTextNode(m.text.slice(last)));
  return out;
}

function pageText(s) {
  return s.page_to && s.page_to !== s.page ? t('pages', { from: num(s.page), to: num(s.page_to) }) : t('page', { page: num(s.page) });
}

function showSource(m, i) {
  const li = m.node && m.node.querySelectorAll('.source')[i];
  if (!li) return;
  li.classList.add('open', 'flash');
  li.querySelector('.snippet').hidden = false;
  li.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  setTimeout(() => li.classList.remove('flash'), 1200);
}

function renderMessage(m) {
  if (!m.node) {
    m.node = $('message-template').content.firstElementChild.cloneNode(true);
    $('messages').append(m.node);
  }
  const node = m.node;
  node.querySelector('.question').textContent = m.question;
  const answer = node.querySelector('.answer');
  answer.dataset.state = m.state;
  node.querySelector('.sources').replaceChildren(
    ...m.sources.map((s, i) => {
      const snippet = el('p', { class: 'snippet', dir: 'auto', text: s.snippet || '' });
      snippet.hidden = true;
      const toggle = el('button', { type: 'button', onclick: () => { snippet.hidden = !snippet.hidden; li.classList.toggle('open', !snippet.hidden); } },
        el('b', { text: `[${num(i + 1)}] ` }), el('span', { dir: 'auto', text: s.filename }), ' · ', pageText(s));
      const li = el('li', { class: 'source', 'data-testid': 'source', 'data-document-id': s.document_id, 'data-page': String(s.page), 'data-page-to': String(s.page_to || s.page), title: s.snippet || '' },
        el('div', { class: 'head' }, toggle,
          el('button', { type: 'button', class: 'link', text: t('open_page'), 'data-testid': 'open-page', onclick: () => openPage(s) })),
        snippet);
      return li;
    }),
  );
  node.querySelector('.answer-text').replaceChildren(...answerNodes(m));
  let status = '';
  if (m.state === 'streaming') status = m.text ? '' : t('streaming');
  else if (m.state === 'error') status = describe(m.error || {});
  else if (m.status === 'cancelled') status = t('cancelled');
  else if (m.usage && m.usage.total_tokens) status = t('tokens_used', { total: num(m.usage.total_tokens) });
  node.querySelector('.status').textContent = status;
}

/** The cited page in the browser's PDF viewer: the file is fetched with the token (a new tab
 *  could not send it) and opened from memory at `#page=N`. */
async function openPage(s) {
  // opened now, while the click lets a window open, and cut from this page at once: what the
  // document's window shows never reaches back into the app
  const w = window.open('', '_blank');
  if (w) w.opener = null;
  try {
    const resp = await fetch(`/v1/documents/${encodeURIComponent(s.document_id)}/file?inline=true`, { headers: headers() });
    if (!resp.ok) throw apiError(resp.status, await resp.json().catch(() => null), resp.headers.get('Retry-After'));
    const blob = new Blob([await resp.arrayBuffer()], { type: 'application/pdf' });
    const url = URL.createObjectURL(blob) + '#page=' + s.page;
    if (w) w.location.href = url;
    else location.assign(url);
    setTimeout(() => URL.revokeObjectURL(url.split('#')[0]), 60_000);
  } catch (e) {
    if (w) w.close();
    show($('chat-error'), describe(e));
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  $('language').addEventListener('change', () => {
    lang = $('language').value === 'fa' ? 'fa' : 'en';
    localStorage.setItem(KEY_LANG, lang);
    applyLanguage();
  });
  $('request-code').addEventListener('click', requestCode);
  $('verify-code').addEventListener('click', verifyCode);
  $('email').addEventListener('keydown', (e) => e.key === 'Enter' && requestCode());
  $('code').addEventListener('keydown', (e) => e.key === 'Enter' && verifyCode());
  $('back-to-email').addEventListener('click', () => {
    $('login-step-email').hidden = false;
    $('login-step-code').hidden = true;
    show($('login-error'), '');
  });
  $('logout').addEventListener('click', logout);
  $('ask').addEventListener('click', ask);
  $('cancel').addEventListener('click', cancel);
  $('new-session').addEventListener('click', newSession);
  $('question').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      ask();
    }
  });
  $('file-input').addEventListener('change', () => {
    addFiles([...$('file-input').files]);
    $('file-input').value = '';
  });
  const drop = $('upload');
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    addFiles([...e.dataTransfer.files]);
  });
  $('more-documents').addEventListener('click', () => loadDocuments(true));
  $('usage-by-day').addEventListener('click', loadUsageDays);
  const today = new Date();
  const weekAgo = new Date(today.getTime() - 6 * 86400_000);
  $('usage-to').value = today.toISOString().slice(0, 10);
  $('usage-from').value = weekAgo.toISOString().slice(0, 10);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && me) loadDocuments();
  });
}

async function main() {
  wire();
  // a workspace named in the address (`/app/?tenant=acme`) is the one to log in to
  const wanted = new URLSearchParams(location.search).get('tenant');
  if (wanted && auth && auth.tenant !== wanted) auth = null;
  $('tenant').value = wanted || (auth && auth.tenant) || '';
  if (auth && auth.email) $('email').value = auth.email;
  applyLanguage();
  if (auth) await start();
  else showView();
}

main();
