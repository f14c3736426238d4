/* What the parts of lens_train.capture._hotpath share (see _hotpath.c). */
#ifndef LENS_TRAIN_HOTPATH_H
#define LENS_TRAIN_HOTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#if PY_VERSION_HEX < 0x030B0000
#error "the C hot path needs Python 3.11 or newer (the Python path runs elsewhere)"
#endif

#if defined(__GNUC__)
#define HP_HIDDEN __attribute__((visibility("hidden"))) /* never bound to another library's symbol */
#else
#define HP_HIDDEN
#endif

/* interned attribute names, and the int 1 (set up by PyInit__hotpath) */
HP_HIDDEN extern PyObject *s_shape, *s_dtype, *s_device, *s_requires_grad, *s_grad_fn, *s_version, *s_detach,
    *s_stack, *s_op_count, *s_inplace, *s_out, *s_setitem, *s_batchnorm, *s_instancenorm, *s_last_op, *s_address,
    *s_pass_num, *s_output_records, *s_self, *s_forward, *s_source, *s_empty;
HP_HIDDEN extern PyObject *hp_one;

/* Object fields of a type read and set by slot offset: for objects of exactly ``type``, each field whose
 * slot hp_slot_offset found; by name (getattr, setattr) for anything else. */
enum { HP_MAX_FIELDS = 32 };
typedef struct {
    PyTypeObject *type; /* borrowed: the owner keeps it alive (NULL: every field by name) */
    int n;
    const char *const *names;
    Py_ssize_t offset[HP_MAX_FIELDS]; /* -1: that field by name */
} HpLayout;
/* the offset of the object slot ``name`` of ``type`` that plain attribute access reads and sets, or -1
 * (only for plain object slots, generic attribute access, no property over the slot) */
HP_HIDDEN Py_ssize_t hp_slot_offset(PyTypeObject *type, const char *name);
HP_HIDDEN void hp_layout(HpLayout *l, PyTypeObject *type, const char *const *names, int n);
HP_HIDDEN PyObject *hp_get(const HpLayout *l, PyObject *obj, int field);           /* new reference; NULL: error set */
HP_HIDDEN int hp_set(const HpLayout *l, PyObject *obj, int field, PyObject *value); /* steals value (NULL: an error set) */

/* OpRecord's fields read and set here, through one process-wide layout (hp_rlayout learns the type) */
enum { R_INDEX, R_FRAMEWORK, R_VERSION, R_TENSOR_REF, R_TIME_S, R_INTERNAL, R_REQUIRES_GRAD, R_GRAD_FN_NAME,
       R_ACTIVATION, R_TRANSFORMED, R_TEMPLATE, R_CONTEXT, R_RNG, R_OUTPUT_OF_MODULES, R_CALLSITE, R_FRAMES,
       R_FUNC, R_LAYER_TYPE, R_OUTPUT_INDEX, R_MODULE_STACK, R_PARAM_IDS, R_ORIGINAL, R_BUFFER_WRITE, R_BOOL_VALUES,
       R_FIELDS };
HP_HIDDEN void hp_rlayout(PyTypeObject *type);
HP_HIDDEN PyObject *hp_rget(PyObject *rec, int field);
HP_HIDDEN int hp_rset(PyObject *rec, int field, PyObject *value);

/* Makes instances of a slots dataclass whose __init__ only stores its arguments, without calling it:
 * every slot from a prototype (the defaults), the first n_args from the caller (in __init__'s order). */
enum { HP_MAX_SLOTS = 96 };
typedef struct {
    PyTypeObject *type;  /* borrowed: the owner holds it, and proto */
    PyObject *proto;     /* an instance its __init__ made, or None */
    Py_ssize_t n_args;
    Py_ssize_t n_slots;  /* the type's slots, or -1: instances are made by calling the type */
    Py_ssize_t slots[HP_MAX_SLOTS]; /* their offsets: the n_args arguments first, in order */
} HpMaker;
/* ``names``: the tuple of the first n_args arguments' names; otherwise, or for a type not laid out as
 * expected, n_slots is -1 */
HP_HIDDEN void hp_maker_init(HpMaker *m, PyTypeObject *type, PyObject *proto, PyObject *names, Py_ssize_t n_args);
HP_HIDDEN PyObject *hp_make(HpMaker *m, PyObject *const *values); /* type(*values): new reference */

/* The getters of tensor metadata (t.shape, ...) of one tensor type, called directly for a tensor of exactly
 * that type: what generic attribute access would call (a data descriptor of the type, generic getattr),
 * without the type lookup, for as long as the type is not modified (its version tag). */
enum { T_SHAPE, T_DTYPE, T_DEVICE, T_REQUIRES_GRAD, T_GRAD_FN, T_VERSION, T_GETTERS };
typedef struct {
    PyTypeObject *type; /* borrowed (the owner holds it); NULL: every read by name */
    unsigned int version;
    getter get[T_GETTERS];
    void *closure[T_GETTERS];
} HpTensorGetters;
HP_HIDDEN void hp_tensor_getters(HpTensorGetters *g, PyTypeObject *type);
HP_HIDDEN PyObject *hp_tensor_attr(const HpTensorGetters *g, PyObject *t, int which); /* t.<which>: new reference */

/* the code of a frame put in an above dict: walks look for no frame of another code there */
HP_HIDDEN void hp_note_call_code(PyObject *code);
/* the raw call site from frame ``f`` up to code ``stop`` (callsites.find_callsite) */
HP_HIDDEN PyObject *hp_walk(PyObject *stop, PyObject *codes, PyObject *above, PyFrameObject *f);
/* obj.name = value, stealing value (NULL: an error already set); in the instance dict directly where plain
 * attribute access would set it there */
HP_HIDDEN int hp_set_attr(PyObject *obj, PyObject *name, PyObject *value);
/* obj.name (new reference), from the instance dict directly where plain attribute access would read it there */
HP_HIDDEN PyObject *hp_get_attr(PyObject *obj, PyObject *name);
/* the tensor a record's tensor_ref names, or None (new reference; NULL: error set) */
HP_HIDDEN PyObject *hp_live(PyObject *rec);
/* *found = the record in ``owner`` of that very tensor (borrowed) or NULL; -1 on error */
HP_HIDDEN int hp_lookup(PyObject *owner, PyObject *t, PyObject **found);

/* The types here keep their object fields together right after the object head, so one set of
 * functions serves them all: ``n`` fields from the first one. */
#define HP_FIELDS(type, first, last) ((offsetof(type, last) - offsetof(type, first)) / sizeof(PyObject *) + 1)
HP_HIDDEN PyObject *hp_alloc(PyTypeObject *type, PyObject *const *values, Py_ssize_t n); /* new refs to values */
HP_HIDDEN int hp_traverse(PyObject *self, Py_ssize_t n, visitproc visit, void *arg);
HP_HIDDEN int hp_clear(PyObject *self, Py_ssize_t n);
HP_HIDDEN void hp_dealloc(PyObject *self, Py_ssize_t n);
/* prefix_traverse, prefix_clear, prefix_dealloc of a type with ``n`` object fields */
#define HP_GC_FUNCTIONS(prefix, n)                                                                                     \
    static int prefix##_traverse(PyObject *self, visitproc visit, void *arg) { return hp_traverse(self, n, visit, arg); } \
    static int prefix##_clear(PyObject *self) { return hp_clear(self, n); }                                           \
    static void prefix##_dealloc(PyObject *self) { hp_dealloc(self, n); }

HP_HIDDEN extern PyTypeObject HandlerType; /* _hotpath_ops.c */
HP_HIDDEN extern PyTypeObject CallsType, WrapperType; /* _hotpath_calls.c */
HP_HIDDEN extern PyMethodDef hp_build_functions[];    /* _hotpath_build.c */
HP_HIDDEN extern PyMethodDef hp_model_functions[];    /* _hotpath_model.c */
HP_HIDDEN extern PyMethodDef hp_calls_functions[];    /* _hotpath_calls.c */
HP_HIDDEN int hp_calls_init(void);                    /* its interned names: -1 on error */
HP_HIDDEN int hp_model_init(void);                    /* its interned names: -1 on error */
/* what ``module.<attr>`` names when it is a plain instance attribute (borrowed), or NULL (an error set, or not) */
HP_HIDDEN PyObject *hp_own_attr(PyObject *module, PyObject *attr);

#endif
