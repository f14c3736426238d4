/* lens_train.capture._hotpath: the recorder's common cases in C.
 *
 * Built by setup.py where a compiler is available (CPython 3.11+: PyFrame_GetLasti, PyType_GetName;
 * a frame's local read from 3.11's frame layout, with PyFrame_GetVar from 3.12); without it the package captures on the Python path,
 * which stays the one implementation of every rare case (lens_train/capture/recorder.py).
 *
 *   _hotpath_ops.c    Handler: the recorder's instance __torch_function__ during a pass
 *   _hotpath_calls.c  Calls, Wrapper: module calls opened and closed around forward
 *   _hotpath_build.c  after the pass: pass grouping, labels, pending layers (passes.grouped_labels, build)
 *   _hotpath_model.c  before the pass: the module walk and its parameters and buffers (model_index)
 *   _hotpath.c        what the others use (call-site walks, field layouts, makers, owner lookups), the module
 */
#include "_hotpath.h"

PyObject *s_shape, *s_dtype, *s_device, *s_requires_grad, *s_grad_fn, *s_version, *s_detach, *s_stack, *s_op_count,
    *s_inplace, *s_out, *s_setitem, *s_batchnorm, *s_instancenorm, *s_last_op, *s_address, *s_pass_num,
    *s_output_records, *s_self, *s_forward, *s_source, *s_empty;
PyObject *hp_one;

/* The codes of the frames that open calls (module calls, decomposed functionals) run in: only a frame of
 * one of them can be in an ``above`` dict, so the walk looks there for no other frame. Every entry put in
 * an above dict notes its frame's code first (hp_note_call_code, _hotpath.note_call_code); past CALL_CODES
 * codes every frame is looked up. Held. */
enum { CALL_CODES = 8 };
static PyObject *call_codes[CALL_CODES];
static int n_call_codes, call_codes_full;

void hp_note_call_code(PyObject *code) {
    for (int i = 0; i < n_call_codes; i++)
        if (call_codes[i] == code)
            return;
    if (n_call_codes == CALL_CODES)
        call_codes_full = 1;
    else
        call_codes[n_call_codes++] = Py_NewRef(code);
}

static int is_call_code(PyObject *code) {
    if (call_codes_full)
        return 1;
    for (int i = 0; i < n_call_codes; i++)
        if (call_codes[i] == code)
            return 1;
    return 0;
}

/* The walk above frame f when f runs an open module call (above: id(frame) -> (frame, walk above)):
 * borrowed, or NULL (an error set, or none). A few open calls are compared directly, more looked up. */
static PyObject *above_of(PyObject *above, PyFrameObject *f) {
    if (PyDict_GET_SIZE(above) <= 8) {
        PyObject *key, *value;
        Py_ssize_t it = 0;
        while (PyDict_Next(above, &it, &key, &value))
            if (PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 2 && PyTuple_GET_ITEM(value, 0) == (PyObject *)f)
                return PyTuple_GET_ITEM(value, 1);
        return NULL;
    }
    PyObject *fid = PyLong_FromVoidPtr(f);
    if (fid == NULL)
        return NULL;
    PyObject *known = PyDict_GetItemWithError(above, fid);
    Py_DECREF(fid);
    return known != NULL && PyTuple_Check(known) && PyTuple_GET_SIZE(known) == 2 && PyTuple_GET_ITEM(known, 0) == (PyObject *)f
               ? PyTuple_GET_ITEM(known, 1)
               : NULL;
}

/* codes[id(code)] = code, skipped for a code this very dict was given lately: a small direct-mapped memo
 * of (dict, code) pairs; the memo holds the dict, so no other dict is ever taken for it. */
static PyObject *memo_codes;
static PyObject *memo[128];

static int note_code(PyObject *codes, PyObject *code) {
    size_t slot = ((size_t)code >> 4) & 127;
    if (codes == memo_codes && memo[slot] == code)
        return 0;
    PyObject *key = PyLong_FromVoidPtr(code);
    int r = key ? PyDict_SetItem(codes, key, code) : -1;
    Py_XDECREF(key);
    if (r < 0)
        return -1;
    if (codes != memo_codes) {
        Py_XSETREF(memo_codes, Py_NewRef(codes));
        memset(memo, 0, sizeof(memo));
    }
    memo[slot] = code; /* (the dict holds it) */
    return 0;
}

/* Recent walks (code, offset pairs) and the tuple made for each: a statement run again gets the same
 * tuple back instead of new ints and a new tuple. Keyed by content (a tuple of ints: an entry can never
 * hold another walk's tuple), two ways per set, process-wide; it holds only those tuples. */
enum { WALK_FRAMES = 16, WALK_CACHE = 1024 };
typedef struct {
    uint64_t hash;
    Py_ssize_t n;
    void *code[WALK_FRAMES];
    int lasti[WALK_FRAMES];
    PyObject *walk;
} WalkEntry;
static WalkEntry walk_cache[WALK_CACHE];

/* The frames of one walk: their code (held) and offset, in a buffer that grows past WALK_FRAMES. */
typedef struct {
    PyObject *inline_code[WALK_FRAMES];
    int inline_lasti[WALK_FRAMES];
    PyObject **code;
    int *lasti;
    Py_ssize_t n, cap;
} Frames;

static int frames_add(Frames *w, PyObject *code, int lasti) { /* steals code */
    if (w->n == w->cap) {
        Py_ssize_t cap = 2 * w->cap;
        PyObject **codes = PyMem_Malloc(cap * sizeof(PyObject *));
        int *lastis = codes ? PyMem_Malloc(cap * sizeof(int)) : NULL;
        if (lastis == NULL) {
            PyMem_Free(codes);
            Py_DECREF(code);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(codes, w->code, w->n * sizeof(PyObject *));
        memcpy(lastis, w->lasti, w->n * sizeof(int));
        if (w->code != w->inline_code) {
            PyMem_Free(w->code);
            PyMem_Free(w->lasti);
        }
        w->code = codes, w->lasti = lastis, w->cap = cap;
    }
    w->code[w->n] = code;
    w->lasti[w->n++] = lasti;
    return 0;
}

static void frames_clear(Frames *w) {
    for (Py_ssize_t i = 0; i < w->n; i++)
        Py_DECREF(w->code[i]);
    if (w->code != w->inline_code) {
        PyMem_Free(w->code);
        PyMem_Free(w->lasti);
    }
}

/* The tuple (code id, offset, ...) of a walk: a short one from walk_cache when it holds the same walk. */
static PyObject *walk_tuple(const Frames *w) {
    Py_ssize_t n = w->n;
    uint64_t hash = 1469598103934665603ULL ^ (uint64_t)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        hash = (hash ^ (uint64_t)(uintptr_t)w->code[i]) * 1099511628211ULL;
        hash = (hash ^ (uint64_t)(unsigned int)w->lasti[i]) * 1099511628211ULL;
    }
    WalkEntry *set = n <= WALK_FRAMES ? &walk_cache[2 * (hash % (WALK_CACHE / 2))] : NULL, *e = set;
    for (int way = 0; set != NULL && way < 2; way++) {
        e = &set[way];
        int same = e->walk != NULL && e->hash == hash && e->n == n;
        for (Py_ssize_t i = 0; same && i < n; i++)
            same = e->code[i] == (void *)w->code[i] && e->lasti[i] == w->lasti[i];
        if (same)
            return Py_NewRef(e->walk);
    }
    if (set != NULL) { /* a new walk takes the first way; the one there moves to the second */
        Py_XDECREF(set[1].walk);
        set[1] = set[0];
        set[0].walk = NULL;
        e = &set[0];
    }
    PyObject *own = PyTuple_New(2 * n);
    for (Py_ssize_t i = 0; own != NULL && i < n; i++) {
        PyObject *cid = PyLong_FromVoidPtr(w->code[i]), *at = cid ? PyLong_FromLong(w->lasti[i]) : NULL;
        if (at == NULL) {
            Py_XDECREF(cid);
            Py_CLEAR(own);
            break;
        }
        PyTuple_SET_ITEM(own, 2 * i, cid);
        PyTuple_SET_ITEM(own, 2 * i + 1, at);
    }
    if (own != NULL && e != NULL) {
        Py_XSETREF(e->walk, Py_NewRef(own));
        e->hash = hash;
        e->n = n;
        for (Py_ssize_t i = 0; i < n; i++) {
            e->code[i] = w->code[i];
            e->lasti[i] = w->lasti[i];
        }
    }
    return own;
}

/* Recent (own walk, walk above) pairs and the tuple made for each: with walk_cache, a statement run again in
 * the same module-call context gets the same raw site object back, capture after capture (resolve_sites keys
 * on it). Two ways per set, by the two pointers, process-wide; an entry holds its pair and the pair both
 * parts, so a pointer here never names another object. */
enum { PAIR_CACHE = 2048 };
static PyObject *pair_cache[PAIR_CACHE];

/* the first of the two slots of a pointer (or two) in a table of ``size`` slots (a power of 2) */
static size_t hp_set_of(const void *a, const void *b, size_t size) {
    uint64_t h = (uint64_t)(uintptr_t)a * 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)b * 0xC2B2AE3D27D4EB4FULL;
    return (size_t)(h >> 40) & (size - 2);
}

static PyObject *walk_pair(PyObject *own, PyObject *above) {
    PyObject **set = &pair_cache[hp_set_of(own, above, PAIR_CACHE)];
    for (int way = 0; way < 2; way++)
        if (set[way] != NULL && PyTuple_GET_ITEM(set[way], 0) == own && PyTuple_GET_ITEM(set[way], 1) == above)
            return Py_NewRef(set[way]);
    PyObject *pair = PyTuple_Pack(2, own, above);
    if (pair != NULL) { /* the first way; the pair there moves to the second */
        Py_XSETREF(set[1], set[0]);
        set[0] = Py_NewRef(pair);
    }
    return pair;
}

/* The raw call site: (code id, offset) of every frame from f up to code ``stop`` (callsites.find_callsite),
 * or (those frames, the walk above) when it meets an open module call's frame. */
PyObject *hp_walk(PyObject *stop, PyObject *codes, PyObject *above, PyFrameObject *f) {
    Frames w;
    w.code = w.inline_code, w.lasti = w.inline_lasti, w.n = 0, w.cap = WALK_FRAMES;
    PyObject *walk_above = NULL, *site = NULL;
    int check_above = PyDict_GET_SIZE(above) > 0, failed = 0;
    Py_XINCREF(f);
    while (f != NULL) {
        PyObject *code = (PyObject *)PyFrame_GetCode(f);
        if (code == stop) {
            Py_DECREF(code);
            break;
        }
        if (note_code(codes, code) < 0) {
            Py_DECREF(code);
            failed = 1;
            break;
        }
        if (frames_add(&w, code, PyFrame_GetLasti(f)) < 0) {
            failed = 1;
            break;
        }
        if (check_above && is_call_code(code)) {
            walk_above = Py_XNewRef(above_of(above, f));
            if (walk_above != NULL || (failed = PyErr_Occurred() != NULL))
                break;
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    if (!failed) {
        PyObject *own = walk_tuple(&w);
        site = own == NULL || walk_above == NULL ? Py_XNewRef(own) : walk_pair(own, walk_above);
        Py_XDECREF(own);
    }
    frames_clear(&w);
    Py_XDECREF(walk_above);
    return site;
}

static PyObject *tensor_attr_name(int which) {
    switch (which) {
    case T_SHAPE: return s_shape;
    case T_DTYPE: return s_dtype;
    case T_DEVICE: return s_device;
    case T_REQUIRES_GRAD: return s_requires_grad;
    case T_GRAD_FN: return s_grad_fn;
    default: return s_version;
    }
}

void hp_tensor_getters(HpTensorGetters *g, PyTypeObject *type) {
    g->type = NULL;
    g->version = 0;
    if (type->tp_getattro != PyObject_GenericGetAttr)
        return;
    for (int i = 0; i < T_GETTERS; i++) {
        PyObject *d = _PyType_Lookup(type, tensor_attr_name(i));
        if (d == NULL || !Py_IS_TYPE(d, &PyGetSetDescr_Type) || ((PyGetSetDescrObject *)d)->d_getset->get == NULL)
            return;
        g->get[i] = ((PyGetSetDescrObject *)d)->d_getset->get;
        g->closure[i] = ((PyGetSetDescrObject *)d)->d_getset->closure;
    }
    if (PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) {
        g->version = type->tp_version_tag;
        g->type = type;
    }
}

PyObject *hp_tensor_attr(const HpTensorGetters *g, PyObject *t, int which) {
    PyTypeObject *tp = Py_TYPE(t);
    if (tp == g->type && tp->tp_version_tag == g->version && PyType_HasFeature(tp, Py_TPFLAGS_VALID_VERSION_TAG))
        return g->get[which](t, g->closure[which]);
    return PyObject_GetAttr(t, tensor_attr_name(which));
}

/* The instance dict of obj when plain attribute access of ``name`` is a lookup there: generic get and set
 * on the type and no attribute of that name on it (borrowed; NULL: not so). */
static PyObject *plain_state(PyObject *obj, PyObject *name) {
    PyTypeObject *tp = Py_TYPE(obj);
    if (tp->tp_getattro != PyObject_GenericGetAttr || tp->tp_setattro != PyObject_GenericSetAttr ||
        _PyType_Lookup(tp, name) != NULL)
        return NULL;
    PyObject **dictptr = _PyObject_GetDictPtr(obj);
    return dictptr != NULL && *dictptr != NULL && PyDict_CheckExact(*dictptr) ? *dictptr : NULL;
}

PyObject *hp_get_attr(PyObject *obj, PyObject *name) {
    PyObject *state = plain_state(obj, name);
    PyObject *v = state ? PyDict_GetItemWithError(state, name) : NULL;
    if (v != NULL)
        return Py_NewRef(v);
    return PyErr_Occurred() ? NULL : PyObject_GetAttr(obj, name);
}

int hp_set_attr(PyObject *obj, PyObject *name, PyObject *value) {
    PyObject *state = value ? plain_state(obj, name) : NULL;
    if (state != NULL) {
        int r = PyDict_SetItem(state, name, value);
        Py_DECREF(value);
        return r;
    }
    if (value == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, value);
    Py_DECREF(value);
    return r;
}

Py_ssize_t hp_slot_offset(PyTypeObject *type, const char *name) {
    PyMemberDef *members = type->tp_members;
    if (members == NULL || type->tp_getattro != PyObject_GenericGetAttr || type->tp_setattro != PyObject_GenericSetAttr)
        return -1;
    for (PyMemberDef *m = members; m->name != NULL; m++) {
        if (strcmp(m->name, name) != 0)
            continue;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY))
            return -1;
        /* the member must be what the type's attribute of that name is (no property over it) */
        PyObject *key = PyUnicode_InternFromString(name);
        PyObject *descr = key ? _PyType_Lookup(type, key) : NULL;
        if (key == NULL)
            PyErr_Clear();
        Py_XDECREF(key);
        return descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type) && ((PyMemberDescrObject *)descr)->d_member == m
                   ? m->offset
                   : -1;
    }
    return -1;
}

void hp_layout(HpLayout *l, PyTypeObject *type, const char *const *names, int n) {
    l->type = type;
    l->names = names;
    l->n = n < HP_MAX_FIELDS ? n : HP_MAX_FIELDS;
    for (int f = 0; f < l->n; f++)
        l->offset[f] = type != NULL ? hp_slot_offset(type, names[f]) : -1;
}

PyObject *hp_get(const HpLayout *l, PyObject *obj, int field) {
    if (Py_TYPE(obj) == l->type && l->offset[field] >= 0) {
        PyObject *v = *(PyObject **)((char *)obj + l->offset[field]);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttrString(obj, l->names[field]);
}

int hp_set(const HpLayout *l, PyObject *obj, int field, PyObject *value) {
    if (value == NULL)
        return -1;
    if (Py_TYPE(obj) == l->type && l->offset[field] >= 0) {
        PyObject **slot = (PyObject **)((char *)obj + l->offset[field]);
        PyObject *old = *slot;
        *slot = value;
        Py_XDECREF(old);
        return 0;
    }
    int r = PyObject_SetAttrString(obj, l->names[field], value);
    Py_DECREF(value);
    return r;
}

/* OpRecord's fields, in the order of the R_ constants */
static const char *const record_fields[R_FIELDS] = {
    "index", "framework", "version", "tensor_ref", "time_s", "is_internally_generated", "requires_grad",
    "grad_fn_name", "activation", "transformed_activation", "call_template", "replay_context", "rng_state",
    "output_of_modules", "callsite", "frames", "func", "layer_type", "output_index", "module_stack", "param_ids",
    "original", "buffer_write", "bool_values"};
static HpLayout record_layout = {NULL, R_FIELDS, record_fields, {0}}; /* (no type yet: every field by name) */
static PyObject *record_type_held; /* keeps record_layout.type's address from naming another type */

void hp_rlayout(PyTypeObject *type) {
    if (type == record_layout.type)
        return;
    Py_XSETREF(record_type_held, Py_NewRef((PyObject *)type));
    hp_layout(&record_layout, type, record_fields, R_FIELDS);
}

PyObject *hp_rget(PyObject *rec, int field) { return hp_get(&record_layout, rec, field); }

int hp_rset(PyObject *rec, int field, PyObject *value) { return hp_set(&record_layout, rec, field, value); }

PyObject *hp_live(PyObject *rec) {
    PyObject *ref = hp_rget(rec, R_TENSOR_REF);
    if (ref == NULL)
        return NULL;
    PyObject *live = PyWeakref_CheckRefExact(ref) ? Py_NewRef(PyWeakref_GET_OBJECT(ref)) : PyObject_CallNoArgs(ref);
    Py_DECREF(ref);
    return live;
}

/* owner lookup: the record of that very tensor, or NULL (borrowed); -1 on error */
int hp_lookup(PyObject *owner, PyObject *t, PyObject **found) {
    *found = NULL;
    PyObject *key = PyLong_FromVoidPtr(t);
    if (key == NULL)
        return -1;
    PyObject *rec = PyDict_GetItemWithError(owner, key);
    Py_DECREF(key);
    if (rec == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *live = hp_live(rec);
    if (live == NULL)
        return -1;
    if (live == t)
        *found = rec;
    Py_DECREF(live);
    return 0;
}

static void maker_compute(HpMaker *m, PyTypeObject *type, PyObject *proto, PyObject *names, Py_ssize_t n_args) {
    m->type = type;
    m->proto = proto;
    m->n_args = n_args;
    m->n_slots = -1;
    PyMemberDef *members = type->tp_members;
    if (proto == Py_None || Py_TYPE(proto) != type || members == NULL || !PyTuple_CheckExact(names) ||
        PyTuple_GET_SIZE(names) != n_args)
        return;
    Py_ssize_t n = 0, found = 0;
    for (; members[n].name != NULL; n++)
        if (n >= HP_MAX_SLOTS || members[n].type != T_OBJECT_EX || (members[n].flags & READONLY))
            return;
    if (n < m->n_args || type->tp_basicsize != (Py_ssize_t)sizeof(PyObject) + n * (Py_ssize_t)sizeof(PyObject *))
        return; /* the slots are all there is (no __dict__, no __weakref__, no base class fields) */
    Py_ssize_t rest = m->n_args;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t at = -1;
        for (Py_ssize_t i = 0; i < m->n_args; i++) {
            PyObject *name = PyTuple_GET_ITEM(names, i);
            if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, members[k].name) == 0)
                at = i;
        }
        if (at >= 0)
            found++;
        m->slots[at >= 0 ? at : rest++] = members[k].offset;
    }
    if (found == m->n_args && rest == n)
        m->n_slots = n;
}

/* Makers worked out lately (matching slots to argument names costs ~50k instructions, once per capture
 * otherwise), by (type, prototype, names, n_args); an entry holds those objects, so their addresses name them. */
enum { MAKERS = 4 };
static struct {
    PyObject *type, *proto, *names;
    HpMaker maker;
} makers[MAKERS];
static int makers_next;

void hp_maker_init(HpMaker *m, PyTypeObject *type, PyObject *proto, PyObject *names, Py_ssize_t n_args) {
    for (int i = 0; i < MAKERS; i++)
        if (makers[i].type == (PyObject *)type && makers[i].proto == proto && makers[i].names == names &&
            makers[i].maker.n_args == n_args) {
            *m = makers[i].maker;
            return;
        }
    maker_compute(m, type, proto, names, n_args);
    int i = makers_next++ % MAKERS;
    Py_XSETREF(makers[i].type, Py_NewRef((PyObject *)type));
    Py_XSETREF(makers[i].proto, Py_NewRef(proto));
    Py_XSETREF(makers[i].names, Py_NewRef(names));
    makers[i].maker = *m;
}

PyObject *hp_make(HpMaker *m, PyObject *const *values) {
    if (m->n_slots < 0)
        return PyObject_Vectorcall((PyObject *)m->type, values, m->n_args, NULL);
    PyObject *obj = m->type->tp_alloc(m->type, 0);
    if (obj == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < m->n_slots; i++) {
        PyObject *v = i < m->n_args ? values[i] : *(PyObject **)((char *)m->proto + m->slots[i]);
        *(PyObject **)((char *)obj + m->slots[i]) = Py_XNewRef(v);
    }
    return obj;
}

static PyObject **fields(PyObject *self) {
    return (PyObject **)((char *)self + sizeof(PyObject));
}

PyObject *hp_alloc(PyTypeObject *type, PyObject *const *values, Py_ssize_t n) {
    PyObject *self = type->tp_alloc(type, 0);
    if (self != NULL)
        for (Py_ssize_t i = 0; i < n; i++)
            fields(self)[i] = Py_NewRef(values[i]);
    return self;
}

int hp_traverse(PyObject *self, Py_ssize_t n, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < n; i++)
        Py_VISIT(fields(self)[i]);
    return 0;
}

int hp_clear(PyObject *self, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        Py_CLEAR(fields(self)[i]);
    return 0;
}

void hp_dealloc(PyObject *self, Py_ssize_t n) {
    PyObject_GC_UnTrack(self);
    hp_clear(self, n);
    Py_TYPE(self)->tp_free(self);
}

/* note_call_code(code): the code of a frame put in an above dict (see hp_note_call_code) */
static PyObject *py_note_call_code(PyObject *mod, PyObject *code) {
    if (!PyCode_Check(code)) {
        PyErr_SetString(PyExc_TypeError, "note_call_code(code)");
        return NULL;
    }
    hp_note_call_code(code);
    Py_RETURN_NONE;
}

/* walk(stop, codes, above, frame): callsites.find_callsite(stop, codes, above, frame)[0], in C */
static PyObject *py_walk(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyDict_Check(args[1]) || !PyDict_Check(args[2]) || !PyFrame_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "walk(stop, codes: dict, above: dict, frame)");
        return NULL;
    }
    return hp_walk(args[0], args[1], args[2], (PyFrameObject *)args[3]);
}

/* The caches of one callsites.resolve_callsites (see callsites._site, which this follows). */
typedef struct {
    PyObject *codes, *sites, *done, *aboves;
    PyObject *walks;        /* callsites._WALKS: raw flat walk -> (key, frames), shared by every capture */
    PyObject *resolve_walk; /* callsites._resolve_walk(raw, codes), for a walk _WALKS does not hold */
} Sites;

/* (key, frames) of a flat walk (new reference) */
static PyObject *flat_walk(Sites *c, PyObject *raw) {
    PyObject *found = PyDict_GetItemWithError(c->walks, raw);
    if (found != NULL)
        return Py_NewRef(found);
    return PyErr_Occurred() ? NULL : PyObject_CallFunctionObjArgs(c->resolve_walk, raw, c->codes, NULL);
}

/* (a[0] + b[0], a[1] + b[1]) of two (key, frames) pairs */
static PyObject *join(PyObject *a, PyObject *b) {
    if (!PyTuple_CheckExact(a) || PyTuple_GET_SIZE(a) != 2 || !PyTuple_CheckExact(b) || PyTuple_GET_SIZE(b) != 2) {
        PyErr_SetString(PyExc_TypeError, "a resolved walk is a (key, frames) tuple");
        return NULL;
    }
    PyObject *key = PySequence_Concat(PyTuple_GET_ITEM(a, 0), PyTuple_GET_ITEM(b, 0));
    PyObject *frames = key ? PySequence_Concat(PyTuple_GET_ITEM(a, 1), PyTuple_GET_ITEM(b, 1)) : NULL;
    PyObject *out = frames ? PyTuple_Pack(2, key, frames) : NULL;
    Py_XDECREF(key);
    Py_XDECREF(frames);
    return out;
}

/* sites.setdefault(key, len(sites)) (new reference) */
static PyObject *site_number(Sites *c, PyObject *key) {
    PyObject *n = PyLong_FromSsize_t(PyDict_GET_SIZE(c->sites));
    PyObject *number = n ? PyDict_SetDefault(c->sites, key, n) : NULL;
    Py_XDECREF(n);
    return Py_XNewRef(number);
}

static int is_shared(PyObject *raw) { /* (own walk, walk above), not a flat walk of ints */
    return PyTuple_CheckExact(raw) && PyTuple_GET_SIZE(raw) == 2 && PyTuple_CheckExact(PyTuple_GET_ITEM(raw, 0));
}

/* callsites._shared_walk: (walk, number of its key, (key, frames)), once per walk object (borrowed from aboves) */
static PyObject *shared_walk(Sites *c, PyObject *walk) {
    PyObject *id = PyLong_FromVoidPtr(walk);
    if (id == NULL)
        return NULL;
    PyObject *entry = PyDict_GetItemWithError(c->aboves, id);
    if (entry != NULL && PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 3 && PyTuple_GET_ITEM(entry, 0) == walk) {
        Py_DECREF(id);
        return entry;
    }
    PyObject *resolved = NULL, *number = NULL;
    entry = NULL;
    if (PyErr_Occurred())
        goto done;
    if (is_shared(walk)) {
        PyObject *inner = flat_walk(c, PyTuple_GET_ITEM(walk, 0));
        PyObject *outer = inner ? shared_walk(c, PyTuple_GET_ITEM(walk, 1)) : NULL;
        resolved = outer ? join(inner, PyTuple_GET_ITEM(outer, 2)) : NULL;
        Py_XDECREF(inner);
    } else {
        resolved = flat_walk(c, walk);
    }
    if (resolved == NULL || !PyTuple_CheckExact(resolved) || PyTuple_GET_SIZE(resolved) != 2)
        goto done;
    number = site_number(c, PyTuple_GET_ITEM(resolved, 0));
    PyObject *made = number ? PyTuple_Pack(3, walk, number, resolved) : NULL;
    if (made != NULL && PyDict_SetItem(c->aboves, id, made) == 0)
        entry = made; /* the dict holds it */
    Py_XDECREF(made);
done:
    Py_DECREF(id);
    Py_XDECREF(resolved);
    Py_XDECREF(number);
    return entry;
}

/* callsites._site: (site number, user frames) of one raw site (new reference) */
static PyObject *resolve_site(Sites *c, PyObject *raw) {
    PyObject *own = raw, *outer = NULL, *seen;
    if (is_shared(raw)) {
        own = PyTuple_GET_ITEM(raw, 0);
        outer = shared_walk(c, PyTuple_GET_ITEM(raw, 1));
        if (outer == NULL)
            return NULL;
        seen = PyTuple_Pack(2, own, PyTuple_GET_ITEM(outer, 1));
        if (seen == NULL)
            return NULL;
    } else {
        seen = Py_NewRef(raw);
    }
    PyObject *found = Py_XNewRef(PyDict_GetItemWithError(c->done, seen));
    if (found == NULL && !PyErr_Occurred()) {
        PyObject *resolved = flat_walk(c, own);
        PyObject *pair = resolved && outer ? join(resolved, PyTuple_GET_ITEM(outer, 2)) : Py_XNewRef(resolved);
        PyObject *number = pair && PyTuple_CheckExact(pair) && PyTuple_GET_SIZE(pair) == 2
                               ? site_number(c, PyTuple_GET_ITEM(pair, 0)) : NULL;
        found = number ? PyTuple_Pack(2, number, PyTuple_GET_ITEM(pair, 1)) : NULL;
        if (found != NULL && PyDict_SetItem(c->done, seen, found) < 0)
            Py_CLEAR(found);
        Py_XDECREF(resolved);
        Py_XDECREF(pair);
        Py_XDECREF(number);
    }
    Py_DECREF(seen);
    if (found != NULL && (!PyTuple_CheckExact(found) || PyTuple_GET_SIZE(found) != 2)) {
        PyErr_SetString(PyExc_TypeError, "a resolved call site is a (number, frames) tuple");
        Py_CLEAR(found);
    }
    return found;
}

/* Raw sites resolved before: raw site -> (site number, user frames), the numbers those of one sites dict
 * (callsites.shared_sites). walk_cache and pair_cache hand a statement the same raw site object capture after
 * capture, so most records are found here by that object alone. Two ways per set, by address; an entry holds
 * its raw site (the address never names another object). The table is emptied when it is handed another sites
 * dict: callsites hands out a new one when it clears its code cache (a code id in a raw site could then name
 * a new code). */
enum { RESOLVED = 4096 };
typedef struct {
    PyObject *raw, *number, *frames;
} Resolved;
static Resolved resolved[RESOLVED];
static PyObject *resolved_sites; /* the sites dict of the numbers in resolved (held) */

static void forget_resolved(PyObject *sites) {
    for (int i = 0; i < RESOLVED; i++) {
        Py_CLEAR(resolved[i].raw);
        Py_CLEAR(resolved[i].number);
        Py_CLEAR(resolved[i].frames);
    }
    Py_XSETREF(resolved_sites, Py_XNewRef(sites));
}

/* resolve_sites(records, codes, sites, done, aboves, walks, resolve_walk): callsites.resolve_callsites's loop */
static PyObject *py_resolve_sites(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyList_Check(args[0]) || !PyDict_Check(args[2]) || !PyDict_Check(args[3]) ||
        !PyDict_Check(args[4]) || !PyDict_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "resolve_sites(records: list, codes, sites: dict, done: dict, aboves: dict, walks: dict, resolve_walk)");
        return NULL;
    }
    Sites c = {args[1], args[2], args[3], args[4], args[5], args[6]};
    if (c.sites != resolved_sites)
        forget_resolved(c.sites);
    PyObject *records = args[0];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *rec = Py_NewRef(PyList_GET_ITEM(records, i));
        PyObject *frames = hp_rget(rec, R_FRAMES), *raw = NULL, *number = NULL, *user = NULL;
        int failed = frames == NULL;
        if (frames == Py_None) {
            raw = hp_rget(rec, R_CALLSITE);
            Resolved *set = raw ? &resolved[hp_set_of(raw, NULL, RESOLVED)] : NULL;
            Resolved *e = set != NULL && set[0].raw == raw ? &set[0] : set != NULL && set[1].raw == raw ? &set[1] : NULL;
            if (e != NULL) {
                number = Py_NewRef(e->number), user = Py_NewRef(e->frames);
            } else if (raw != NULL) {
                PyObject *found = resolve_site(&c, raw); /* (may run Python: e is looked at again after it) */
                if (found != NULL) {
                    number = Py_NewRef(PyTuple_GET_ITEM(found, 0)), user = Py_NewRef(PyTuple_GET_ITEM(found, 1));
                    if (c.sites == resolved_sites) { /* the first way; the entry there moves to the second */
                        Resolved gone = set[1];
                        set[1] = set[0];
                        set[0] = (Resolved){Py_NewRef(raw), Py_NewRef(number), Py_NewRef(user)};
                        Py_XDECREF(gone.raw);
                        Py_XDECREF(gone.number);
                        Py_XDECREF(gone.frames);
                    }
                    Py_DECREF(found);
                }
            }
            failed = number == NULL || hp_rset(rec, R_CALLSITE, Py_NewRef(number)) < 0 ||
                     hp_rset(rec, R_FRAMES, Py_NewRef(user)) < 0;
        }
        Py_XDECREF(frames);
        Py_XDECREF(raw);
        Py_XDECREF(number);
        Py_XDECREF(user);
        Py_DECREF(rec);
        if (failed)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef functions[] = {
    {"walk", (PyCFunction)(void (*)(void))py_walk, METH_FASTCALL, "The raw call site from frame up to code stop."},
    {"note_call_code", (PyCFunction)py_note_call_code, METH_O, "The code of a frame put in an above dict."},
    {"resolve_sites", (PyCFunction)(void (*)(void))py_resolve_sites, METH_FASTCALL,
     "The loop of callsites.resolve_callsites."},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hotpath", "The recorder's common case in C.", -1,
                                    functions};

PyMODINIT_FUNC PyInit__hotpath(void) {
    struct {
        PyObject **slot;
        const char *text;
    } strings[] = {{&s_shape, "shape"},
                   {&s_dtype, "dtype"},
                   {&s_device, "device"},
                   {&s_requires_grad, "requires_grad"},
                   {&s_grad_fn, "grad_fn"},
                   {&s_version, "_version"},
                   {&s_detach, "detach"},
                   {&s_stack, "stack"},
                   {&s_op_count, "_op_count"},
                   {&s_inplace, "inplace"},
                   {&s_out, "out"},
                   {&s_setitem, "__setitem__"},
                   {&s_batchnorm, "batchnorm"},
                   {&s_instancenorm, "instancenorm"},
                   {&s_last_op, "last_op"},
                   {&s_address, "address"},
                   {&s_pass_num, "pass_num"},
                   {&s_output_records, "output_records"},
                   {&s_self, "self"},
                   {&s_forward, "forward"},
                   {&s_source, "source"},
                   {&s_empty, ""}};
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        *strings[i].slot = PyUnicode_InternFromString(strings[i].text);
        if (*strings[i].slot == NULL)
            return NULL;
    }
    hp_one = PyLong_FromLong(1);
    if (hp_one == NULL || PyType_Ready(&HandlerType) < 0 || PyType_Ready(&CallsType) < 0 || PyType_Ready(&WrapperType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    /* bumped with every change of Handler's arguments: a stale build is not used (recorder.py) */
    if (PyModule_AddFunctions(m, hp_build_functions) < 0 || PyModule_AddFunctions(m, hp_model_functions) < 0 ||
        PyModule_AddFunctions(m, hp_calls_functions) < 0 || hp_calls_init() < 0 ||
        hp_model_init() < 0 || PyModule_AddIntConstant(m, "ABI", 15) < 0 || PyModule_AddObjectRef(m, "Handler", (PyObject *)&HandlerType) < 0 ||
        PyModule_AddObjectRef(m, "Calls", (PyObject *)&CallsType) < 0 ||
        PyModule_AddObjectRef(m, "Wrapper", (PyObject *)&WrapperType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
