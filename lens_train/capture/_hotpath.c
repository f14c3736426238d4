/* lens_train.capture._hotpath: the recorder's common cases in C.
 *
 * Built by setup.py where a compiler is available (CPython 3.11+: PyFrame_GetLasti,
 * PyType_GetName, PyFrame_GetLocals); without it the package captures on the Python path,
 * which stays the one implementation of every rare case (lens_train/capture/recorder.py).
 *
 *   _hotpath_ops.c    Handler: the recorder's instance __torch_function__ during a pass
 *   _hotpath_calls.c  Calls, Wrapper: module calls opened and closed around forward
 *   _hotpath_build.c  pass grouping and labels after the pass (passes.group_passes, pass_labels)
 *   _hotpath.c        what both use (call-site walks, owner lookups), the module itself
 */
#include "_hotpath.h"

PyObject *s_shape, *s_dtype, *s_device, *s_requires_grad, *s_grad_fn, *s_version, *s_rec_version,
    *s_detach, *s_tensor_ref, *s_index, *s_framework, *s_stack, *s_op_count, *s_time_s,
    *s_is_internally_generated, *s_grad_fn_name, *s_activation, *s_transformed_activation,
    *s_inplace, *s_out, *s_setitem, *s_batchnorm, *s_instancenorm, *s_last_op, *s_address,
    *s_pass_num, *s_output_of_modules, *s_output_records, *s_self, *s_forward, *s_call_template,
    *s_replay_context, *s_rng_state, *s_callsite, *s_frames, *s_func, *s_layer_type, *s_output_index, *s_module_stack,
    *s_param_ids, *s_source, *s_empty, *s_original;
PyObject *hp_one;

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

static int note_code(PyObject *codes, PyObject *code, PyObject *cid /* NULL: made here */) {
    size_t slot = ((size_t)code >> 4) & 127;
    if (codes == memo_codes && memo[slot] == code)
        return 0;
    PyObject *key = cid ? Py_NewRef(cid) : PyLong_FromVoidPtr(code);
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

/* hp_walk for a walk longer than the cache keeps (any length). */
static PyObject *walk_long(PyObject *stop, PyObject *codes, PyObject *above, PyFrameObject *f) {
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_XINCREF(f);
    int check_above = PyDict_GET_SIZE(above) > 0;
    while (f != NULL) {
        PyObject *code = (PyObject *)PyFrame_GetCode(f);
        if (code == stop) {
            Py_DECREF(code);
            break;
        }
        PyObject *cid = PyLong_FromVoidPtr(code);
        PyObject *lasti = cid ? PyLong_FromLong(PyFrame_GetLasti(f)) : NULL;
        int bad = lasti == NULL || note_code(codes, code, cid) < 0 || PyList_Append(out, cid) < 0 ||
                  PyList_Append(out, lasti) < 0;
        Py_XDECREF(cid);
        Py_XDECREF(lasti);
        Py_DECREF(code);
        if (bad)
            goto fail;
        if (check_above) {
            PyObject *walk = above_of(above, f);
            if (walk == NULL && PyErr_Occurred())
                goto fail;
            if (walk != NULL) {
                PyObject *own = PyList_AsTuple(out);
                PyObject *site = own ? PyTuple_Pack(2, own, walk) : NULL;
                Py_XDECREF(own);
                Py_DECREF(out);
                Py_DECREF(f);
                return site;
            }
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    PyObject *site = PyList_AsTuple(out);
    Py_DECREF(out);
    return site;
fail:
    Py_XDECREF(f);
    Py_DECREF(out);
    return NULL;
}

/* Recent walks (code, offset pairs) and the tuple made for each: a statement run again gets the same
 * tuple back instead of new ints and a new tuple. Keyed by content (a tuple of ints: an entry can never
 * hold another walk's tuple), direct-mapped, process-wide; it holds only those tuples. */
enum { WALK_FRAMES = 16, WALK_CACHE = 1024 };
typedef struct {
    uint64_t hash;
    Py_ssize_t n;
    void *code[WALK_FRAMES];
    int lasti[WALK_FRAMES];
    PyObject *walk;
} WalkEntry;
static WalkEntry walk_cache[WALK_CACHE];

/* The raw call site: (code id, offset) of every frame from f up to code ``stop`` (callsites.find_callsite). */
PyObject *hp_walk(PyObject *stop, PyObject *codes, PyObject *above, PyFrameObject *f) {
    PyObject *code[WALK_FRAMES], *walk_above = NULL, *own = NULL, *site = NULL;
    int lasti[WALK_FRAMES];
    Py_ssize_t n = 0;
    uint64_t hash = 1469598103934665603ULL;
    int check_above = PyDict_GET_SIZE(above) > 0, failed = 0;
    PyFrameObject *start = f;
    Py_XINCREF(f);
    while (f != NULL) {
        PyObject *c = (PyObject *)PyFrame_GetCode(f);
        if (c == stop || n == WALK_FRAMES) {
            Py_DECREF(c);
            break;
        }
        code[n] = c;
        lasti[n] = PyFrame_GetLasti(f);
        hash = (hash ^ (uint64_t)(uintptr_t)c) * 1099511628211ULL;
        hash = (hash ^ (uint64_t)(unsigned int)lasti[n]) * 1099511628211ULL;
        n++;
        if (check_above) {
            walk_above = Py_XNewRef(above_of(above, f));
            if (walk_above == NULL && PyErr_Occurred()) {
                failed = 1;
                break;
            }
            if (walk_above != NULL)
                break;
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    int more = f != NULL && walk_above == NULL && !failed && n == WALK_FRAMES; /* (stopped for length) */
    Py_XDECREF(f);
    for (Py_ssize_t i = 0; !failed && !more && i < n; i++)
        failed = note_code(codes, code[i], NULL) < 0;
    if (failed || more)
        goto done;
    hash ^= (uint64_t)n;
    WalkEntry *e = &walk_cache[hash % WALK_CACHE];
    int same = e->walk != NULL && e->hash == hash && e->n == n;
    for (Py_ssize_t i = 0; same && i < n; i++)
        same = e->code[i] == (void *)code[i] && e->lasti[i] == lasti[i];
    if (same) {
        own = Py_NewRef(e->walk);
    } else {
        own = PyTuple_New(2 * n);
        for (Py_ssize_t i = 0; own != NULL && i < n; i++) {
            PyObject *cid = PyLong_FromVoidPtr(code[i]), *at = cid ? PyLong_FromLong(lasti[i]) : NULL;
            if (at == NULL) {
                Py_XDECREF(cid);
                Py_CLEAR(own);
                break;
            }
            PyTuple_SET_ITEM(own, 2 * i, cid);
            PyTuple_SET_ITEM(own, 2 * i + 1, at);
        }
        if (own != NULL) {
            Py_XSETREF(e->walk, Py_NewRef(own));
            e->hash = hash;
            e->n = n;
            for (Py_ssize_t i = 0; i < n; i++) {
                e->code[i] = code[i];
                e->lasti[i] = lasti[i];
            }
        }
    }
    site = own == NULL || walk_above == NULL ? Py_XNewRef(own) : PyTuple_Pack(2, own, walk_above);
done:
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(code[i]);
    Py_XDECREF(own);
    Py_XDECREF(walk_above);
    if (more)
        return walk_long(stop, codes, above, start);
    return site;
}

int hp_set_attr(PyObject *obj, PyObject *name, PyObject *value) {
    if (value == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, value);
    Py_DECREF(value);
    return r;
}

static PyObject **const rnames[R_FIELDS] = {&s_index, &s_framework, &s_rec_version, &s_tensor_ref, &s_time_s,
                                           &s_is_internally_generated, &s_requires_grad, &s_grad_fn_name, &s_activation,
                                           &s_transformed_activation, &s_call_template, &s_replay_context, &s_rng_state,
                                           &s_output_of_modules, &s_callsite, &s_frames, &s_func, &s_layer_type,
                                           &s_output_index, &s_module_stack, &s_param_ids, &s_original};
static PyTypeObject *rtype; /* held; NULL: every access by name */
static Py_ssize_t roffset[R_FIELDS];

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

void hp_rlayout(PyTypeObject *type) {
    if (type == rtype)
        return;
    Py_CLEAR(rtype);
    for (int f = 0; f < R_FIELDS; f++)
        if ((roffset[f] = hp_slot_offset(type, PyUnicode_AsUTF8(*rnames[f]))) < 0)
            return;
    rtype = (PyTypeObject *)Py_NewRef((PyObject *)type);
}

PyObject *hp_rget(PyObject *rec, int field) {
    if (Py_TYPE(rec) == rtype) {
        PyObject *v = *(PyObject **)((char *)rec + roffset[field]);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(rec, *rnames[field]);
}

int hp_rset(PyObject *rec, int field, PyObject *value) {
    if (value == NULL)
        return -1;
    if (Py_TYPE(rec) == rtype) {
        PyObject **slot = (PyObject **)((char *)rec + roffset[field]);
        PyObject *old = *slot;
        *slot = value;
        Py_XDECREF(old);
        return 0;
    }
    int r = PyObject_SetAttr(rec, *rnames[field], value);
    Py_DECREF(value);
    return r;
}

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

void hp_maker_init(HpMaker *m, PyTypeObject *type, PyObject *proto, PyObject *names, Py_ssize_t n_args) {
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

/* resolve_sites(records, codes, sites, done, aboves, walks, resolve_walk): callsites.resolve_callsites's loop */
static PyObject *py_resolve_sites(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyList_Check(args[0]) || !PyDict_Check(args[2]) || !PyDict_Check(args[3]) ||
        !PyDict_Check(args[4]) || !PyDict_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "resolve_sites(records: list, codes, sites: dict, done: dict, aboves: dict, walks: dict, resolve_walk)");
        return NULL;
    }
    Sites c = {args[1], args[2], args[3], args[4], args[5], args[6]};
    PyObject *records = args[0];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *rec = Py_NewRef(PyList_GET_ITEM(records, i));
        PyObject *frames = hp_rget(rec, R_FRAMES), *raw = NULL, *found = NULL;
        int failed = frames == NULL;
        if (frames == Py_None) {
            raw = hp_rget(rec, R_CALLSITE);
            found = raw ? resolve_site(&c, raw) : NULL;
            failed = found == NULL || hp_rset(rec, R_CALLSITE, Py_NewRef(PyTuple_GET_ITEM(found, 0))) < 0 ||
                     hp_rset(rec, R_FRAMES, Py_NewRef(PyTuple_GET_ITEM(found, 1))) < 0;
        }
        Py_XDECREF(frames);
        Py_XDECREF(raw);
        Py_XDECREF(found);
        Py_DECREF(rec);
        if (failed)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef functions[] = {
    {"walk", (PyCFunction)(void (*)(void))py_walk, METH_FASTCALL, "The raw call site from frame up to code stop."},
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
                   {&s_rec_version, "version"},
                   {&s_detach, "detach"},
                   {&s_tensor_ref, "tensor_ref"},
                   {&s_index, "index"},
                   {&s_framework, "framework"},
                   {&s_stack, "stack"},
                   {&s_op_count, "_op_count"},
                   {&s_time_s, "time_s"},
                   {&s_is_internally_generated, "is_internally_generated"},
                   {&s_grad_fn_name, "grad_fn_name"},
                   {&s_activation, "activation"},
                   {&s_transformed_activation, "transformed_activation"},
                   {&s_inplace, "inplace"},
                   {&s_out, "out"},
                   {&s_setitem, "__setitem__"},
                   {&s_batchnorm, "batchnorm"},
                   {&s_instancenorm, "instancenorm"},
                   {&s_last_op, "last_op"},
                   {&s_address, "address"},
                   {&s_pass_num, "pass_num"},
                   {&s_output_of_modules, "output_of_modules"},
                   {&s_output_records, "output_records"},
                   {&s_self, "self"},
                   {&s_forward, "forward"},
                   {&s_call_template, "call_template"},
                   {&s_replay_context, "replay_context"},
                   {&s_rng_state, "rng_state"},
                   {&s_callsite, "callsite"},
                   {&s_frames, "frames"},
                   {&s_func, "func"},
                   {&s_layer_type, "layer_type"},
                   {&s_output_index, "output_index"},
                   {&s_module_stack, "module_stack"},
                   {&s_param_ids, "param_ids"},
                   {&s_source, "source"},
                   {&s_empty, ""},
                   {&s_original, "original"}};
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
    if (PyModule_AddFunctions(m, hp_build_functions) < 0 || PyModule_AddIntConstant(m, "ABI", 8) < 0 || PyModule_AddObjectRef(m, "Handler", (PyObject *)&HandlerType) < 0 ||
        PyModule_AddObjectRef(m, "Calls", (PyObject *)&CallsType) < 0 ||
        PyModule_AddObjectRef(m, "Wrapper", (PyObject *)&WrapperType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
