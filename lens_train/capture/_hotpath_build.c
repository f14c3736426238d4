/* What build_log runs once per record after the pass, in C: the common path of passes.group_passes
 * (a key per record, buckets, one LayerGroup per place) and its numbering, and passes.pass_labels.
 * passes.py stays the one description of both; where a bucket repeats without parameters this calls
 * back into it (passes._split_loops), so every rule of loop detection has one implementation. */
#include "_hotpath.h"

/* A LayerGroup's fields, read and set by slot where the type is laid out for it (else by name). */
enum { G_MEMBERS, G_LAYER_TYPE, G_LABEL, G_TYPE_INDEX, G_LAYER_INDEX, G_BOOKKEEPING, G_FIELDS };
static const char *const group_fields[G_FIELDS] = {"members", "layer_type", "label", "type_index", "layer_index",
                                                   "bookkeeping"};

/* passes._pass_key(rec) (new reference) */
static PyObject *pass_key(PyObject *rec, PyObject *index, PyObject *layer_type, PyObject *sources) {
    int source = PySet_Contains(sources, layer_type);
    if (source < 0)
        return NULL;
    if (source) {
        PyObject *func = hp_rget(rec, R_FUNC);
        if (func == NULL)
            return NULL;
        Py_DECREF(func);
        if (func == Py_None)
            return PyTuple_Pack(2, s_source, index);
    }
    PyObject *stack = hp_rget(rec, R_MODULE_STACK), *module = NULL, *key = NULL;
    PyObject *out_index = NULL, *callsite = NULL, *params = NULL;
    if (stack == NULL)
        return NULL;
    int nonempty = PyObject_IsTrue(stack);
    if (nonempty < 0)
        goto done;
    if (nonempty) {
        PyObject *last = PySequence_GetItem(stack, -1);
        module = last ? PySequence_GetItem(last, 0) : NULL;
        Py_XDECREF(last);
    } else {
        module = Py_NewRef(s_empty);
    }
    if (module == NULL || (out_index = hp_rget(rec, R_OUTPUT_INDEX)) == NULL ||
        (callsite = hp_rget(rec, R_CALLSITE)) == NULL || (params = hp_rget(rec, R_PARAM_IDS)) == NULL)
        goto done;
    key = PyTuple_Pack(5, layer_type, out_index, module, callsite, params);
done:
    Py_XDECREF(params);
    Py_XDECREF(callsite);
    Py_XDECREF(out_index);
    Py_XDECREF(module);
    Py_DECREF(stack);
    return key;
}

/* group_buckets(records, flags, sources, group_type, group_proto, group_init, split) -> (groups, side, interleaved):
 * passes.group_passes up to the numbering. split(buckets, members) gives the groups of a bucket that
 * repeats without parameters (passes._split_loops, with the loop context it makes once). */
static PyObject *py_group_buckets(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyList_Check(args[0]) || !PyByteArray_Check(args[1]) || !PyAnySet_Check(args[2]) ||
        !PyType_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "group_buckets(records: list, flags: bytearray, sources: set, group_type, group_proto, group_init, split)");
        return NULL;
    }
    PyObject *records = args[0], *flags = args[1], *sources = args[2], *split = args[6];
    HpMaker maker;
    hp_maker_init(&maker, (PyTypeObject *)args[3], args[4], args[5], 2);
    HpLayout layout;
    hp_layout(&layout, (PyTypeObject *)args[3], group_fields, G_FIELDS);
#if PY_VERSION_HEX < 0x030D0000 /* sized for a bucket per record (most places run once): no rehashing */
    PyObject *buckets = _PyDict_NewPresized(PyList_GET_SIZE(records));
#else
    PyObject *buckets = PyDict_New();
#endif
    PyObject *side = PyList_New(0), *groups = PyList_New(0), *out = NULL;
    int interleaved = 0;
    if (buckets == NULL || side == NULL || groups == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *rec = Py_NewRef(PyList_GET_ITEM(records, i));
        PyObject *index = hp_rget(rec, R_INDEX), *layer_type = NULL, *key = NULL, *members = NULL;
        int failed = 1;
        Py_ssize_t at = index ? PyLong_AsSsize_t(index) : -1;
        if (at < 0 || at >= PyByteArray_GET_SIZE(flags)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_IndexError, "a record's index is outside the bookkeeping flags");
            goto next;
        }
        if ((layer_type = hp_rget(rec, R_LAYER_TYPE)) == NULL)
            goto next;
        if (PyByteArray_AS_STRING(flags)[at]) {
            PyObject *one = PyList_New(1);
            if (one == NULL)
                goto next;
            PyList_SET_ITEM(one, 0, Py_NewRef(index));
            PyObject *argv[2] = {one, layer_type};
            PyObject *group = hp_make(&maker, argv);
            Py_DECREF(one);
            failed = group == NULL || hp_set(&layout, group, G_BOOKKEEPING, Py_NewRef(Py_True)) < 0 ||
                     PyList_Append(side, group) < 0;
            Py_XDECREF(group);
            goto next;
        }
        if ((key = pass_key(rec, index, layer_type, sources)) == NULL)
            goto next;
        members = Py_XNewRef(PyDict_GetItemWithError(buckets, key));
        if (members != NULL) {
            failed = PyList_Append(members, index) < 0;
        } else if (!PyErr_Occurred() && (members = PyList_New(1)) != NULL) {
            PyList_SET_ITEM(members, 0, Py_NewRef(index));
            failed = PyDict_SetItem(buckets, key, members) < 0;
        }
    next:
        Py_XDECREF(members);
        Py_XDECREF(key);
        Py_XDECREF(layer_type);
        Py_XDECREF(index);
        Py_DECREF(rec);
        if (failed)
            goto done;
    }
    PyObject *key, *members;
    Py_ssize_t it = 0;
    while (PyDict_Next(buckets, &it, &key, &members)) {
        Py_INCREF(members);
        PyObject *first = NULL, *layer_type = NULL, *params = NULL, *made = NULL;
        int failed = 1;
        Py_ssize_t at = PyList_Check(members) && PyList_GET_SIZE(members) ? PyLong_AsSsize_t(PyList_GET_ITEM(members, 0)) : -1;
        if (at < 0 || at >= PyList_GET_SIZE(records)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_IndexError, "a record's index is not its place in the records");
            goto again;
        }
        first = Py_NewRef(PyList_GET_ITEM(records, at));
        if ((layer_type = hp_rget(first, R_LAYER_TYPE)) == NULL || (params = hp_rget(first, R_PARAM_IDS)) == NULL)
            goto again;
        int has_params = PyObject_IsTrue(params);
        if (has_params < 0)
            goto again;
        if (PyList_GET_SIZE(members) == 1 || has_params) {
            PyObject *argv[2] = {members, layer_type};
            made = hp_make(&maker, argv);
            failed = made == NULL || PyList_Append(groups, made) < 0;
        } else {
            made = PyObject_CallFunctionObjArgs(split, buckets, members, NULL);
            if (made != NULL && !PyList_Check(made))
                PyErr_SetString(PyExc_TypeError, "split(buckets, members) returns a list of groups");
            else if (made != NULL) {
                interleaved = interleaved || PyList_GET_SIZE(made) > 1;
                failed = PyList_SetSlice(groups, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, made) < 0;
            }
        }
    again:
        Py_XDECREF(made);
        Py_XDECREF(params);
        Py_XDECREF(layer_type);
        Py_XDECREF(first);
        Py_DECREF(members);
        if (failed)
            goto done;
    }
    out = Py_BuildValue("(OOO)", groups, side, interleaved ? Py_True : Py_False);
done:
    Py_XDECREF(groups);
    Py_XDECREF(side);
    Py_XDECREF(buckets);
    return out;
}

/* Append the decimal digits of v >= 0 at p: their count. */
static Py_ssize_t put_number(char *p, Py_ssize_t v) {
    char digits[24];
    Py_ssize_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0 && n < 24);
    for (Py_ssize_t i = 0; i < n; i++)
        p[i] = digits[n - 1 - i];
    return n;
}

/* f"{text}{sep}{a}" or, with sep2, f"{text}{sep}{a}{sep2}{b}" (a, b >= 0): written straight into a new
 * ASCII string for ASCII text (FromFormat parses its format on every call; labels are made per record). */
static PyObject *label_text(PyObject *text, const char *sep, Py_ssize_t a, const char *sep2, Py_ssize_t b) {
    char buf[256];
    Py_ssize_t size = 0;
    const char *chars = PyUnicode_Check(text) && PyUnicode_IS_ASCII(text) ? (const char *)PyUnicode_DATA(text) : NULL;
    size_t extra = strlen(sep) + (sep2 ? strlen(sep2) : 0) + 48;
    if (chars != NULL && (size = PyUnicode_GET_LENGTH(text)) + (Py_ssize_t)extra < (Py_ssize_t)sizeof(buf) && a >= 0 && b >= 0) {
        memcpy(buf, chars, (size_t)size);
        Py_ssize_t n = size;
        memcpy(buf + n, sep, strlen(sep));
        n += (Py_ssize_t)strlen(sep);
        n += put_number(buf + n, a);
        if (sep2 != NULL) {
            memcpy(buf + n, sep2, strlen(sep2));
            n += (Py_ssize_t)strlen(sep2);
            n += put_number(buf + n, b);
        }
        PyObject *out = PyUnicode_New(n, 127);
        if (out != NULL)
            memcpy(PyUnicode_DATA(out), buf, (size_t)n);
        return out;
    }
    PyObject *head = PyObject_Str(text);
    PyObject *tail = head == NULL ? NULL
                     : sep2 ? PyUnicode_FromFormat("%s%zd%s%zd", sep, a, sep2, b)
                            : PyUnicode_FromFormat("%s%zd", sep, a);
    PyObject *out = tail ? PyUnicode_Concat(head, tail) : NULL;
    Py_XDECREF(head);
    Py_XDECREF(tail);
    return out;
}

/* Number and label ``groups`` (passes.group_passes' last loops): ``{type}_{count}_{index}``, and
 * ``{type}_bk_{count}`` for the bookkeeping ones (``bookkeeping`` true: layer_index -1). */
static int number_groups(const HpLayout *layout, PyObject *groups, int bookkeeping) {
    PyObject *counts = PyDict_New();
    if (counts == NULL)
        return -1;
    int failed = 0;
    for (Py_ssize_t i = 0; !failed && i < PyList_GET_SIZE(groups); i++) {
        PyObject *g = Py_NewRef(PyList_GET_ITEM(groups, i));
        PyObject *type = hp_get(layout, g, G_LAYER_TYPE), *count = NULL;
        failed = 1;
        if (type != NULL) {
            PyObject *sofar = PyDict_GetItemWithError(counts, type);
            Py_ssize_t n = sofar ? PyLong_AsSsize_t(sofar) + 1 : 1;
            count = (sofar || !PyErr_Occurred()) && n > 0 ? PyLong_FromSsize_t(n) : NULL;
            PyObject *label = count == NULL ? NULL
                              : bookkeeping ? label_text(type, "_bk_", n, NULL, 0)
                                            : label_text(type, "_", n, "_", i);
            failed = label == NULL || PyDict_SetItem(counts, type, count) < 0 ||
                     hp_set(layout, g, G_TYPE_INDEX, Py_NewRef(count)) < 0 ||
                     hp_set(layout, g, G_LAYER_INDEX, PyLong_FromSsize_t(bookkeeping ? -1 : i)) < 0 ||
                     hp_set(layout, g, G_LABEL, label) < 0;
        }
        Py_XDECREF(count);
        Py_XDECREF(type);
        Py_DECREF(g);
    }
    Py_DECREF(counts);
    return failed ? -1 : 0;
}

/* label_groups(groups, side, n, group_type) -> (groups + side, labels, group_of, pass_num): the numbering of
 * passes.group_passes, then passes.pass_labels of its result. */
static PyObject *py_label_groups(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0]) || !PyList_Check(args[1]) || !PyLong_Check(args[2]) || !PyType_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "label_groups(groups: list, side: list, n: int, group_type)");
        return NULL;
    }
    HpLayout layout;
    hp_layout(&layout, (PyTypeObject *)args[3], group_fields, G_FIELDS);
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    if (n < 0)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "n is negative");
    if (number_groups(&layout, args[0], 0) < 0 || number_groups(&layout, args[1], 1) < 0)
        return NULL;
    PyObject *all = PySequence_Concat(args[0], args[1]);
    PyObject *labels = all ? PyList_New(n) : NULL, *group_of = labels ? PyList_New(n) : NULL;
    PyObject *pass_num = group_of ? PyList_New(n) : NULL, *out = NULL;
    if (pass_num == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyList_SET_ITEM(labels, i, Py_NewRef(s_empty));
        PyList_SET_ITEM(group_of, i, PyLong_FromLong(0));
        PyList_SET_ITEM(pass_num, i, Py_NewRef(hp_one));
    }
    for (Py_ssize_t gi = 0; gi < PyList_GET_SIZE(all); gi++) {
        PyObject *g = Py_NewRef(PyList_GET_ITEM(all, gi));
        PyObject *members = hp_get(&layout, g, G_MEMBERS), *label = members ? hp_get(&layout, g, G_LABEL) : NULL;
        PyObject *gi_obj = label ? PyLong_FromSsize_t(gi) : NULL;
        int failed = gi_obj == NULL;
        if (!failed && (!PyList_Check(members) || !PyUnicode_Check(label))) {
            PyErr_SetString(PyExc_TypeError, "a group's members are a list and its label a str");
            failed = 1;
        }
        Py_ssize_t m = failed ? 0 : PyList_GET_SIZE(members);
        for (Py_ssize_t p = 0; !failed && p < m; p++) {
            Py_ssize_t idx = PyLong_AsSsize_t(PyList_GET_ITEM(members, p));
            if (idx < 0 || idx >= n) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_IndexError, "a group member is not a record index");
                failed = 1;
                break;
            }
            PyObject *text = m > 1 ? label_text(label, ":", p + 1, NULL, 0) : Py_NewRef(label);
            PyObject *num = text ? PyLong_FromSsize_t(p + 1) : NULL;
            if (num == NULL) {
                Py_XDECREF(text);
                failed = 1;
                break;
            }
            /* (each steals the new value and drops the one it replaces; idx is in range) */
            int bad = PyList_SetItem(labels, idx, text) < 0;
            bad = PyList_SetItem(group_of, idx, Py_NewRef(gi_obj)) < 0 || bad;
            bad = PyList_SetItem(pass_num, idx, num) < 0 || bad;
            if (bad) {
                failed = 1;
                break;
            }
        }
        Py_XDECREF(gi_obj);
        Py_XDECREF(label);
        Py_XDECREF(members);
        Py_DECREF(g);
        if (failed)
            goto done;
    }
    out = PyTuple_Pack(4, all, labels, group_of, pass_num);
done:
    Py_XDECREF(pass_num);
    Py_XDECREF(group_of);
    Py_XDECREF(labels);
    Py_XDECREF(all);
    return out;
}

/* The fields build._pending_layers sets (layer_log.PENDING_FIELDS), in this order. */
enum { P_LABEL, P_CONTENTS, P_TRANSFORMED, P_GRADIENT, P_ORIGINAL, P_MATERIALIZE, P_LOOKUP_KEYS, P_KEY_INDEX, P_KEY_POS, P_FIELDS };
static const char *const pending_fields[P_FIELDS] = {"layer_label", "tensor_contents", "transformed_activation", "gradient",
                                             "original_activation", "_materialize", "_lookup_keys", "_key_index", "_key_pos"};

/* pending_layers(data, labels, keys, layer_type, pending_type): build._pending_layers, or None where the types
 * are not laid out as it needs (plain slots of layer_type, which pending_type adds nothing to). */
static PyObject *py_pending_layers(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyList_Check(args[0]) || !PyList_Check(args[1]) || !PyType_Check(args[3]) || !PyType_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "pending_layers(data: list, labels: list, keys, layer_type, pending_type)");
        return NULL;
    }
    PyObject *data = args[0], *labels = args[1], *keys = args[2];
    PyTypeObject *layer = (PyTypeObject *)args[3], *pending = (PyTypeObject *)args[4];
    HpLayout fields;
    hp_layout(&fields, layer, pending_fields, P_FIELDS);
    for (int f = 0; f < P_FIELDS; f++)
        if (fields.offset[f] < 0)
            Py_RETURN_NONE;
    if (!PyType_IsSubtype(pending, layer) || pending->tp_basicsize != layer->tp_basicsize ||
        pending->tp_itemsize != 0 || pending->tp_alloc != PyType_GenericAlloc)
        Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    for (Py_ssize_t pos = 0; out != NULL && pos < PyList_GET_SIZE(data); pos++) {
        PyObject *rec = Py_NewRef(PyList_GET_ITEM(data, pos));
        PyObject *v[P_FIELDS] = {NULL};
        PyObject *index = hp_rget(rec, R_INDEX), *obj = NULL;
        Py_ssize_t at = index ? PyLong_AsSsize_t(index) : -1;
        int failed = 1;
        if (at < 0 || at >= PyList_GET_SIZE(labels)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_IndexError, "a record's index has no label");
        } else if ((v[P_CONTENTS] = hp_rget(rec, R_ACTIVATION)) && (v[P_TRANSFORMED] = hp_rget(rec, R_TRANSFORMED)) &&
                   (v[P_ORIGINAL] = hp_rget(rec, R_ORIGINAL)) && (v[P_KEY_POS] = PyLong_FromSsize_t(pos)) &&
                   (obj = pending->tp_alloc(pending, 0))) {
            v[P_LABEL] = Py_NewRef(PyList_GET_ITEM(labels, at));
            v[P_GRADIENT] = Py_NewRef(Py_None);
            v[P_MATERIALIZE] = Py_NewRef(Py_None);
            v[P_LOOKUP_KEYS] = Py_NewRef(Py_None);
            v[P_KEY_INDEX] = Py_NewRef(keys);
            for (int f = 0; f < P_FIELDS; f++) { /* a fresh object: every slot is empty */
                *(PyObject **)((char *)obj + fields.offset[f]) = v[f];
                v[f] = NULL;
            }
            failed = PyList_Append(out, obj) < 0;
        }
        for (int f = 0; f < P_FIELDS; f++)
            Py_XDECREF(v[f]);
        Py_XDECREF(obj);
        Py_XDECREF(index);
        Py_DECREF(rec);
        if (failed)
            Py_CLEAR(out);
    }
    return out;
}

/* param_info(params) -> {id(p): (address, shape, element count, bytes)}: build._param_info (each parameter
 * once, under its first name), its metadata read through the type's getters. */
static PyObject *py_param_info(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "param_info(params: tuple of (address, parameter) pairs)");
        return NULL;
    }
    PyObject *params = args[0], *out = PyDict_New();
    HpTensorGetters g = {NULL};
    PyTypeObject *read_type = NULL;
    enum { DTYPES = 8 };
    PyObject *dtypes[DTYPES] = {NULL}; /* the dtypes met, and their item sizes (borrowed: torch keeps dtypes) */
    long long itemsizes[DTYPES];
    int n_dtypes = 0;
    for (Py_ssize_t i = 0; out != NULL && i < PyTuple_GET_SIZE(params); i++) {
        PyObject *pair = PyTuple_GET_ITEM(params, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "params holds (address, parameter) pairs");
            Py_CLEAR(out);
            break;
        }
        PyObject *p = PyTuple_GET_ITEM(pair, 1);
        PyObject *key = PyLong_FromVoidPtr(p), *size = NULL, *shape = NULL, *dtype = NULL, *info = NULL;
        int failed = key == NULL, known = key ? PyDict_Contains(out, key) : 0;
        if (failed || known)
            goto next;
        failed = 1;
        if (known < 0)
            goto next;
        if (Py_TYPE(p) != read_type) {
            hp_tensor_getters(&g, Py_TYPE(p));
            read_type = Py_TYPE(p);
        }
        size = hp_tensor_attr(&g, p, T_SHAPE);
        shape = size ? PySequence_Tuple(size) : NULL;
        dtype = shape ? hp_tensor_attr(&g, p, T_DTYPE) : NULL;
        if (dtype == NULL)
            goto next;
        long long count = 1, itemsize = -1;
        for (Py_ssize_t d = 0; d < PyTuple_GET_SIZE(shape); d++) {
            long long extent = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, d));
            if (extent == -1 && PyErr_Occurred())
                goto next;
            count *= extent;
        }
        for (int k = 0; k < n_dtypes; k++)
            if (dtypes[k] == dtype)
                itemsize = itemsizes[k];
        if (itemsize < 0) {
            PyObject *bytes = PyObject_GetAttrString(dtype, "itemsize");
            itemsize = bytes ? PyLong_AsLongLong(bytes) : -1;
            Py_XDECREF(bytes);
            if (itemsize == -1 && PyErr_Occurred())
                goto next;
            if (n_dtypes < DTYPES) {
                dtypes[n_dtypes] = dtype;
                itemsizes[n_dtypes++] = itemsize;
            }
        }
        info = Py_BuildValue("(OOLL)", PyTuple_GET_ITEM(pair, 0), shape, count, count * itemsize);
        failed = info == NULL || PyDict_SetItem(out, key, info) < 0;
    next:
        Py_XDECREF(info);
        Py_XDECREF(dtype);
        Py_XDECREF(shape);
        Py_XDECREF(size);
        Py_XDECREF(key);
        if (failed)
            Py_CLEAR(out);
    }
    return out;
}

/* scan_records(records) -> (side, conditions): whether some record wrote into a buffer or ran inside a
 * sharding wrapper (a bookkeeping candidate: bookkeeping.bookkeeping_flags), and whether some record
 * holds the values of Python conditions (bool_values) */
static PyObject *py_scan_records(PyObject *mod, PyObject *records) {
    if (!PyList_Check(records)) {
        PyErr_SetString(PyExc_TypeError, "scan_records(records: list)");
        return NULL;
    }
    int side = 0, conditions = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records) && !(side && conditions); i++) {
        PyObject *rec = PyList_GET_ITEM(records, i);
        for (int f = side ? 2 : 0; f < (conditions ? 2 : 3); f++) {
            PyObject *v = hp_rget(rec, f == 0 ? R_BUFFER_WRITE : f == 1 ? R_FRAMEWORK : R_BOOL_VALUES);
            int truth = v == NULL ? -1 : f == 0 ? v != Py_None : PyObject_IsTrue(v);
            Py_XDECREF(v);
            if (truth < 0)
                return NULL;
            if (truth && f < 2)
                side = 1;
            else if (truth)
                conditions = 1;
        }
    }
    return Py_BuildValue("(OO)", side ? Py_True : Py_False, conditions ? Py_True : Py_False);
}

PyMethodDef hp_build_functions[] = {
    {"pending_layers", (PyCFunction)(void (*)(void))py_pending_layers, METH_FASTCALL,
     "build._pending_layers: one PendingLayerLog per data-path record."},
    {"group_buckets", (PyCFunction)(void (*)(void))py_group_buckets, METH_FASTCALL,
     "passes.group_passes up to the numbering: (groups, bookkeeping groups, interleaved)."},
    {"label_groups", (PyCFunction)(void (*)(void))py_label_groups, METH_FASTCALL,
     "The numbering of passes.group_passes, then passes.pass_labels."},
    {"scan_records", (PyCFunction)py_scan_records, METH_O,
     "(whether a record wrote into a buffer or ran in a sharding wrapper, whether one holds condition values)."},
    {"param_info", (PyCFunction)(void (*)(void))py_param_info, METH_FASTCALL,
     "build._param_info: id(parameter) -> (address, shape, element count, bytes)."},
    {NULL},
};
