/*
 * tashkent_capture: writeset capture for tashkent, loaded into every
 * replica's PostgreSQL (unmodified; this is an ordinary C trigger library,
 * shipped by the proxy, see `src/proxy/capture/mod.rs`).
 *
 * A row trigger on every replicated table appends one *entry* per changed
 * row to a buffer that lives as long as the transaction; `ws_read()` hands
 * the buffer out as bytea chunks before COMMIT. The buffer follows the
 * transaction: a rolled-back subtransaction (ROLLBACK TO, a PL/pgSQL
 * EXCEPTION block) drops the entries captured inside it, and the end of
 * the transaction empties it. It is a list of chunks (no value near
 * PostgreSQL's 1 GB limit is ever built) and refuses to grow past
 * `tashkent.max_writeset_bytes` with SQLSTATE 54000.
 *
 * Entry format (capture format 3; all integers little-endian):
 *
 *   entry := op:u8  body_len:u32  body
 *   str   := len:u32  bytes
 *   list  := count:u32  str*          (refs: count pairs of str: table, key)
 *
 *   'I' insert   table pk row uniques refs
 *   'U' update   table pk row old_pk old_row uniques gone refs
 *   'D' delete   table pk old_row uniques
 *   'T' truncate table
 *   'X' DDL      json                 (from the event trigger, see FORMAT.md)
 *   'L' lock     table pk             (a row locked FOR [NO KEY] UPDATE, see
 *                                      tashkent_locks.c; format 3)
 *
 * Nothing is captured while an extension's script runs (see
 * tashkent_in_extension_script).
 *
 * - table: the schema-qualified, quoted name (of the partitioned root for
 *   rows of a partition; the partition itself for TRUNCATE of one);
 * - row, old_row: the row in record text (record_out's format, columns of
 *   the root table in order), rendered with fixed settings: DateStyle ISO
 *   YMD, IntervalStyle postgres, TimeZone UTC, extra_float_digits 3,
 *   bytea_output hex, and names of reg* values qualified. Input functions
 *   read that text back to the same value (pg_dump relies on the same
 *   property), so a replica reads back what the origin wrote;
 * - pk: the primary key's conflict key, empty when the table has none
 *   (for 'L' also when the key has a NULL, which a primary key cannot);
 *   old_pk and old_row are empty unless an UPDATE changed the primary key;
 * - uniques: conflict keys of the other unique indexes (no key where a
 *   value is NULL, unless NULLS NOT DISTINCT); gone: an UPDATE's old unique
 *   keys the new row no longer has;
 * - refs: for each foreign key whose columns an INSERT set or an UPDATE
 *   changed (and are not NULL): the parent table and the key the parent
 *   row has in the referenced index.
 *
 * A conflict key is the index name, a NUL byte, then per key column a tag
 * byte and the value: 1 + the 64-bit hash of the type's default hash
 * opclass under the index column's collation (so values equal for the
 * index are equal keys: 1.5 and 1.50, 'A' and 'a' under a case-insensitive
 * collation, 0 and -0); 2 + len:u32 + output text for types without one;
 * 0 for NULL. Unique indexes on expressions or with a predicate give the
 * key of the index name alone: every writer of such a table conflicts with
 * every concurrent one (coarse, but never a replica that cannot apply).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/tupconvert.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgtime.h"
#include "utils/builtins.h"
#include "utils/bytea.h"
#include "utils/datum.h"
#include "utils/float.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(tashkent_capture_row);
PG_FUNCTION_INFO_V1(tashkent_capture_truncate);
PG_FUNCTION_INFO_V1(tashkent_ws_append_ddl);
PG_FUNCTION_INFO_V1(tashkent_ws_read);
PG_FUNCTION_INFO_V1(tashkent_ws_size);
PG_FUNCTION_INFO_V1(tashkent_capture_version);
PG_FUNCTION_INFO_V1(tashkent_in_extension_script);

/* Bumped whenever the entry format changes; the proxy checks it. */
#define CAPTURE_FORMAT 3

#define CHUNK_MIN ((Size) 8192)
#define CHUNK_MAX ((Size) 1024 * 1024)
#define DEFAULT_MAX_WRITESET ((int64) 256 * 1024 * 1024)

/* ---------------------------------------------------------------------
 * The transaction's buffer
 * --------------------------------------------------------------------- */

typedef struct WsChunk
{
	struct WsChunk *next;
	Size		used;
	Size		cap;
	char		data[FLEXIBLE_ARRAY_MEMBER];
} WsChunk;

static MemoryContext ws_context = NULL;
static WsChunk *ws_head = NULL;
static WsChunk *ws_tail = NULL;
static Size ws_len = 0;
/* ws_len when each subtransaction level started (index: nesting level). */
static Size *ws_marks = NULL;
static int	ws_marks_cap = 0;
/* Statement start of the last DDL entry (a data statement in the same
 * client message would be replayed twice). */
static TimestampTz ws_ddl_statement = 0;
/* The cap, read from the GUC when the buffer crosses a megabyte. */
static int64 ws_cap = DEFAULT_MAX_WRITESET;
static Size ws_cap_checked_at = 0;
static bool callbacks_registered = false;

static void
ws_reset(void)
{
	if (ws_context != NULL)
		MemoryContextReset(ws_context);
	ws_head = ws_tail = NULL;
	ws_len = 0;
	ws_ddl_statement = 0;
	ws_cap_checked_at = 0;
}

static void
ws_truncate(Size len)
{
	WsChunk    *c;
	Size		seen = 0;

	if (len >= ws_len)
		return;
	for (c = ws_head; c != NULL; c = c->next)
	{
		if (seen + c->used >= len)
		{
			WsChunk    *rest = c->next;

			c->used = len - seen;
			c->next = NULL;
			ws_tail = c;
			while (rest != NULL)
			{
				WsChunk    *n = rest->next;

				pfree(rest);
				rest = n;
			}
			break;
		}
		seen += c->used;
	}
	ws_len = len;
}

static void
ws_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			ws_reset();
			break;
		default:
			break;
	}
}

static void
ensure_marks(int level)
{
	if (level >= ws_marks_cap)
	{
		int			cap = Max(16, level * 2);

		if (ws_marks == NULL)
			ws_marks = MemoryContextAlloc(TopMemoryContext, cap * sizeof(Size));
		else
			ws_marks = repalloc(ws_marks, cap * sizeof(Size));
		ws_marks_cap = cap;
	}
}

static void
ws_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_START_SUB)
	{
		ensure_marks(level);
		ws_marks[level] = ws_len;
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB && level < ws_marks_cap)
		ws_truncate(ws_marks[level]);
}

static void
register_callbacks(void)
{
	int			level = GetCurrentTransactionNestLevel();

	if (callbacks_registered)
		return;
	ws_context = AllocSetContextCreate(TopMemoryContext, "tashkent writeset",
									   ALLOCSET_DEFAULT_SIZES);
	RegisterXactCallback(ws_xact_callback, NULL);
	RegisterSubXactCallback(ws_subxact_callback, NULL);
	callbacks_registered = true;
	/* The subtransactions open now started with nothing captured. */
	ensure_marks(level);
	for (int l = 0; l <= level; l++)
		ws_marks[l] = 0;
}

static void install_lock_capture(void);

void
_PG_init(void)
{
	register_callbacks();
	install_lock_capture();
}

/* The transaction's cap: tashkent.max_writeset_bytes (set by the proxy on
 * the database), re-read as the buffer grows. */
static void
ws_check_cap(Size adding)
{
	if (ws_len + adding >= ws_cap_checked_at + CHUNK_MAX || ws_cap_checked_at == 0)
	{
		const char *v = GetConfigOption("tashkent.max_writeset_bytes", true, false);
		int64		cap = DEFAULT_MAX_WRITESET;

		if (v != NULL && v[0] != '\0')
		{
			char	   *end;
			long long	n = strtoll(v, &end, 10);

			if (*end == '\0' && n > 0)
				cap = n;
		}
		ws_cap = cap;
		ws_cap_checked_at = ws_len + 1;
	}
	if ((int64) (ws_len + adding) > ws_cap)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("transaction writes more than tashkent accepts: its writeset exceeds %lld bytes",
						(long long) ws_cap),
				 errdetail("tashkent.max_writeset_bytes limits the captured changes of one transaction."),
				 errhint("Split the transaction into smaller ones.")));
}

static void
ws_append(const char *data, Size len)
{
	register_callbacks();
	ws_check_cap(len);
	while (len > 0)
	{
		Size		n;

		if (ws_tail == NULL || ws_tail->used == ws_tail->cap)
		{
			Size		cap = ws_tail == NULL ? CHUNK_MIN : Min(ws_tail->cap * 2, CHUNK_MAX);
			WsChunk    *c = MemoryContextAlloc(ws_context, offsetof(WsChunk, data) + cap);

			c->next = NULL;
			c->used = 0;
			c->cap = cap;
			if (ws_tail == NULL)
				ws_head = c;
			else
				ws_tail->next = c;
			ws_tail = c;
		}
		n = Min(len, ws_tail->cap - ws_tail->used);
		memcpy(ws_tail->data + ws_tail->used, data, n);
		ws_tail->used += n;
		ws_len += n;
		data += n;
		len -= n;
	}
}

/* ---------------------------------------------------------------------
 * Encoding helpers
 * --------------------------------------------------------------------- */

static void
put_u32(StringInfo buf, uint32 v)
{
	char		b[4];

	b[0] = (char) (v & 0xff);
	b[1] = (char) ((v >> 8) & 0xff);
	b[2] = (char) ((v >> 16) & 0xff);
	b[3] = (char) ((v >> 24) & 0xff);
	appendBinaryStringInfo(buf, b, 4);
}

static void
put_u64(StringInfo buf, uint64 v)
{
	put_u32(buf, (uint32) (v & 0xffffffff));
	put_u32(buf, (uint32) (v >> 32));
}

static void
put_str(StringInfo buf, const char *data, Size len)
{
	put_u32(buf, (uint32) len);
	appendBinaryStringInfo(buf, data, len);
}

static void
put_strinfo(StringInfo buf, StringInfo s)
{
	put_str(buf, s->data, s->len);
}

/* Overwrites the u32 at `at` with the length of what follows it. */
static void
patch_len(StringInfo buf, int at)
{
	uint32		v = (uint32) (buf->len - at - 4);

	buf->data[at] = (char) (v & 0xff);
	buf->data[at + 1] = (char) ((v >> 8) & 0xff);
	buf->data[at + 2] = (char) ((v >> 16) & 0xff);
	buf->data[at + 3] = (char) ((v >> 24) & 0xff);
}

/* ---------------------------------------------------------------------
 * Canonical text: fixed output settings
 * --------------------------------------------------------------------- */

typedef struct OutputSettings
{
	int			date_style;
	int			date_order;
	int			interval_style;
	int			float_digits;
	pg_tz	   *tz;
	int			bytea;
} OutputSettings;

static pg_tz *utc_tz = NULL;

static void
settings_push(OutputSettings *saved)
{
	if (utc_tz == NULL)
		utc_tz = pg_tzset("UTC");
	saved->date_style = DateStyle;
	saved->date_order = DateOrder;
	saved->interval_style = IntervalStyle;
	saved->float_digits = extra_float_digits;
	saved->tz = session_timezone;
	saved->bytea = bytea_output;
	DateStyle = USE_ISO_DATES;
	DateOrder = DATEORDER_YMD;
	IntervalStyle = INTSTYLE_POSTGRES;
	extra_float_digits = 3;
	if (utc_tz != NULL)
		session_timezone = utc_tz;
	bytea_output = BYTEA_OUTPUT_HEX;
}

static void
settings_pop(const OutputSettings *saved)
{
	DateStyle = saved->date_style;
	DateOrder = saved->date_order;
	IntervalStyle = saved->interval_style;
	extra_float_digits = saved->float_digits;
	session_timezone = saved->tz;
	bytea_output = saved->bytea;
}

/* ---------------------------------------------------------------------
 * What is known about a table (cached per backend)
 * --------------------------------------------------------------------- */

typedef struct KeyCol
{
	AttrNumber	attnum;			/* in the root's row */
	Oid			collation;
	bool		hashable;
	FmgrInfo	hash;			/* extended hash (value, seed) */
	FmgrInfo	out;			/* output function, when not hashable */
} KeyCol;

typedef struct KeyDef
{
	char	   *name;			/* the index's name */
	int			ncols;			/* 0: the whole table (expression/partial) */
	bool		nulls_not_distinct;
	KeyCol	   *cols;
} KeyDef;

typedef struct RefDef
{
	char	   *parent;			/* the parent table, qualified and quoted */
	KeyDef		key;			/* the parent index, with the child's columns */
} RefDef;

typedef struct RelInfo
{
	Oid			relid;			/* hash key: the relation a trigger fired on */
	bool		valid;
	MemoryContext cxt;
	char	   *name;			/* the root table, qualified and quoted */
	TupleConversionMap *map;	/* partition row -> root row; NULL if same */
	TupleDesc	desc;			/* the root's row */
	FmgrInfo   *out;			/* per root attribute */
	bool		has_pk;
	KeyDef		pk;
	int			nuniques;
	KeyDef	   *uniques;
	int			nrefs;
	RefDef	   *refs;
	bool		reg_types;		/* values print names: qualify them */
	bool		money;			/* values print under lc_monetary */
} RelInfo;

static HTAB *rel_cache = NULL;

static void
rel_cache_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	RelInfo    *info;

	if (rel_cache == NULL)
		return;
	/* Any relation: a parent's index or name may have changed too. */
	hash_seq_init(&status, rel_cache);
	while ((info = hash_seq_search(&status)) != NULL)
		info->valid = false;
}

static char *
qualified_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

static bool
is_reg_type(Oid typid)
{
	Oid			elem;

	typid = getBaseType(typid);
	elem = get_element_type(typid);
	if (OidIsValid(elem))
		typid = getBaseType(elem);
	switch (typid)
	{
		case REGCLASSOID:
		case REGTYPEOID:
		case REGPROCOID:
		case REGPROCEDUREOID:
		case REGOPEROID:
		case REGOPERATOROID:
		case REGCONFIGOID:
		case REGDICTIONARYOID:
		case REGNAMESPACEOID:
		case REGROLEOID:
		case REGCOLLATIONOID:
			return true;
		default:
			return false;
	}
}

static void
key_col_init(KeyCol *col, AttrNumber attnum, Oid typid, Oid collation)
{
	TypeCacheEntry *tc = lookup_type_cache(typid, TYPECACHE_HASH_EXTENDED_PROC_FINFO);
	Oid			outfn;
	bool		varlena;

	col->attnum = attnum;
	col->collation = collation;
	col->hashable = OidIsValid(tc->hash_extended_proc);
	if (col->hashable)
		fmgr_info_copy(&col->hash, &tc->hash_extended_proc_finfo, CurrentMemoryContext);
	getTypeOutputInfo(typid, &outfn, &varlena);
	fmgr_info_cxt(outfn, &col->out, CurrentMemoryContext);
}

/* The unique indexes of `root` (relkind r or p), primary key first. */
static void
load_keys(RelInfo *info, Relation root)
{
	List	   *indexes = RelationGetIndexList(root);
	ListCell   *lc;
	int			n = 0;

	info->uniques = palloc0(sizeof(KeyDef) * Max(list_length(indexes), 1));
	foreach(lc, indexes)
	{
		Oid			indexoid = lfirst_oid(lc);
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
		Form_pg_index idx;
		KeyDef	   *key;
		bool		isnull;
		Datum		d;
		oidvector  *collations;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for index %u", indexoid);
		idx = (Form_pg_index) GETSTRUCT(tup);
		if (!idx->indisunique)
		{
			ReleaseSysCache(tup);
			continue;
		}
		key = idx->indisprimary ? &info->pk : &info->uniques[n++];
		if (idx->indisprimary)
			info->has_pk = true;
		key->name = pstrdup(get_rel_name(indexoid));
		key->nulls_not_distinct = idx->indnullsnotdistinct;
		if (!heap_attisnull(tup, Anum_pg_index_indexprs, NULL) ||
			!heap_attisnull(tup, Anum_pg_index_indpred, NULL))
		{
			key->ncols = 0;
			ReleaseSysCache(tup);
			continue;
		}
		d = SysCacheGetAttr(INDEXRELID, tup, Anum_pg_index_indcollation, &isnull);
		collations = isnull ? NULL : (oidvector *) DatumGetPointer(d);
		key->ncols = idx->indnkeyatts;
		key->cols = palloc0(sizeof(KeyCol) * key->ncols);
		for (int i = 0; i < key->ncols; i++)
		{
			AttrNumber	attnum = idx->indkey.values[i];
			Form_pg_attribute att = TupleDescAttr(info->desc, attnum - 1);

			key_col_init(&key->cols[i], attnum, att->atttypid,
						 collations ? collations->values[i] : InvalidOid);
		}
		ReleaseSysCache(tup);
	}
	info->nuniques = n;
}

/* The foreign keys of `root`, each with the parent's index columns mapped
 * to the child's. */
static void
load_refs(RelInfo *info, Relation root)
{
	List	   *fks = RelationGetFKeyList(root);
	ListCell   *lc;
	int			n = 0;

	info->refs = palloc0(sizeof(RefDef) * Max(list_length(fks), 1));
	foreach(lc, fks)
	{
		ForeignKeyCacheInfo *fk = lfirst_node(ForeignKeyCacheInfo, lc);
		HeapTuple	con = SearchSysCache1(CONSTROID, ObjectIdGetDatum(fk->conoid));
		Oid			parent_index;
		HeapTuple	tup;
		Form_pg_index idx;
		RefDef	   *ref;
		bool		isnull;
		Datum		d;
		oidvector  *collations;

		if (!HeapTupleIsValid(con))
			continue;
		parent_index = ((Form_pg_constraint) GETSTRUCT(con))->conindid;
		ReleaseSysCache(con);
		tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(parent_index));
		if (!HeapTupleIsValid(tup))
			continue;
		idx = (Form_pg_index) GETSTRUCT(tup);
		ref = &info->refs[n];
		ref->parent = qualified_name(fk->confrelid);
		ref->key.name = pstrdup(get_rel_name(parent_index));
		ref->key.nulls_not_distinct = false;
		ref->key.ncols = idx->indnkeyatts;
		ref->key.cols = palloc0(sizeof(KeyCol) * ref->key.ncols);
		d = SysCacheGetAttr(INDEXRELID, tup, Anum_pg_index_indcollation, &isnull);
		collations = isnull ? NULL : (oidvector *) DatumGetPointer(d);
		for (int i = 0; i < ref->key.ncols; i++)
		{
			AttrNumber	parent_att = idx->indkey.values[i];
			AttrNumber	child_att = InvalidAttrNumber;

			for (int j = 0; j < fk->nkeys; j++)
				if (fk->confkey[j] == parent_att)
					child_att = fk->conkey[j];
			if (child_att == InvalidAttrNumber)
			{
				/* Not a plain column index: no reference key. */
				ref->key.ncols = -1;
				break;
			}
			key_col_init(&ref->key.cols[i], child_att,
						 TupleDescAttr(info->desc, child_att - 1)->atttypid,
						 collations ? collations->values[i] : InvalidOid);
		}
		ReleaseSysCache(tup);
		if (ref->key.ncols > 0)
			n++;
	}
	info->nrefs = n;
}

static RelInfo *
rel_info(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	RelInfo    *info;
	bool		found;
	MemoryContext old;
	Oid			rootid = relid;
	Relation	root;

	if (rel_cache == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(RelInfo);
		rel_cache = hash_create("tashkent capture tables", 64, &ctl,
								HASH_ELEM | HASH_BLOBS);
		CacheRegisterRelcacheCallback(rel_cache_invalidate, (Datum) 0);
	}
	info = hash_search(rel_cache, &relid, HASH_ENTER, &found);
	if (found && info->valid)
		return info;
	if (found && info->cxt != NULL)
		MemoryContextDelete(info->cxt);
	memset(info, 0, sizeof(RelInfo));
	info->relid = relid;
	info->cxt = AllocSetContextCreate(CacheMemoryContext, "tashkent capture table",
									  ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(info->cxt);

	if (rel->rd_rel->relispartition)
	{
		List	   *ancestors = get_partition_ancestors(relid);

		rootid = llast_oid(ancestors);
	}
	root = rootid == relid ? rel : relation_open(rootid, AccessShareLock);
	info->name = qualified_name(rootid);
	info->desc = CreateTupleDescCopy(RelationGetDescr(root));
	if (root != rel)
		info->map = convert_tuples_by_name(CreateTupleDescCopy(RelationGetDescr(rel)),
										   info->desc);
	info->out = palloc0(sizeof(FmgrInfo) * info->desc->natts);
	for (int i = 0; i < info->desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(info->desc, i);
		Oid			outfn;
		bool		varlena;

		if (att->attisdropped)
			continue;
		getTypeOutputInfo(att->atttypid, &outfn, &varlena);
		fmgr_info_cxt(outfn, &info->out[i], info->cxt);
		info->reg_types |= is_reg_type(att->atttypid);
		info->money |= getBaseType(att->atttypid) == CASHOID;
	}
	load_keys(info, root);
	load_refs(info, root);
	if (root != rel)
		relation_close(root, AccessShareLock);
	MemoryContextSwitchTo(old);
	info->valid = true;
	return info;
}

/* ---------------------------------------------------------------------
 * Rendering rows and keys
 * --------------------------------------------------------------------- */

/* Appends `values` as record_out would print them. */
static void
render_row(StringInfo buf, RelInfo *info, Datum *values, bool *nulls)
{
	appendStringInfoChar(buf, '(');
	for (int i = 0, n = 0; i < info->desc->natts; i++)
	{
		char	   *text;
		bool		quote;
		char	   *p;

		if (TupleDescAttr(info->desc, i)->attisdropped)
			continue;
		if (n++ > 0)
			appendStringInfoChar(buf, ',');
		if (nulls[i])
			continue;
		text = OutputFunctionCall(&info->out[i], values[i]);
		quote = text[0] == '\0';
		for (p = text; *p && !quote; p++)
			if (*p == '"' || *p == '\\' || *p == '(' || *p == ')' || *p == ',' ||
				isspace((unsigned char) *p))
				quote = true;
		if (quote)
			appendStringInfoChar(buf, '"');
		for (p = text; *p; p++)
		{
			if (*p == '"' || *p == '\\')
				appendStringInfoChar(buf, *p);
			appendStringInfoChar(buf, *p);
		}
		if (quote)
			appendStringInfoChar(buf, '"');
		pfree(text);
	}
	appendStringInfoChar(buf, ')');
}

/* Renders key `key` of the row into `out` (reset first); false when the
 * row has no such key (a NULL value in a unique index). */
static bool
render_key(StringInfo out, KeyDef *key, Datum *values, bool *nulls)
{
	resetStringInfo(out);
	appendStringInfoString(out, key->name);
	appendStringInfoChar(out, '\0');
	for (int i = 0; i < key->ncols; i++)
	{
		KeyCol	   *col = &key->cols[i];
		int			a = col->attnum - 1;

		if (nulls[a])
		{
			if (!key->nulls_not_distinct)
				return false;
			appendStringInfoChar(out, 0);
		}
		else if (col->hashable)
		{
			uint64		h = DatumGetUInt64(FunctionCall2Coll(&col->hash, col->collation,
															 values[a], UInt64GetDatum(0)));

			appendStringInfoChar(out, 1);
			put_u64(out, h);
		}
		else
		{
			char	   *text = OutputFunctionCall(&col->out, values[a]);

			appendStringInfoChar(out, 2);
			put_str(out, text, strlen(text));
		}
	}
	return true;
}

/* The keys of one row: its pk (if any) and the other unique keys. */
typedef struct RowKeys
{
	StringInfoData pk;
	bool		has_pk;
	int			n;
	StringInfoData *uniques;
} RowKeys;

static void
row_keys(RowKeys *k, RelInfo *info, Datum *values, bool *nulls)
{
	initStringInfo(&k->pk);
	k->has_pk = info->has_pk && render_key(&k->pk, &info->pk, values, nulls);
	if (!k->has_pk)
		resetStringInfo(&k->pk);
	k->uniques = palloc(sizeof(StringInfoData) * Max(info->nuniques, 1));
	k->n = 0;
	for (int i = 0; i < info->nuniques; i++)
	{
		initStringInfo(&k->uniques[k->n]);
		if (render_key(&k->uniques[k->n], &info->uniques[i], values, nulls))
			k->n++;
	}
}

static bool
key_in(StringInfo key, RowKeys *k)
{
	for (int i = 0; i < k->n; i++)
		if (k->uniques[i].len == key->len &&
			memcmp(k->uniques[i].data, key->data, key->len) == 0)
			return true;
	return false;
}

static void
put_keys(StringInfo buf, RowKeys *k)
{
	put_u32(buf, (uint32) k->n);
	for (int i = 0; i < k->n; i++)
		put_strinfo(buf, &k->uniques[i]);
}

static bool
column_changed(RelInfo *info, AttrNumber attnum, Datum *old, bool *oldnulls,
			   Datum *new, bool *newnulls)
{
	int			a = attnum - 1;
	Form_pg_attribute att = TupleDescAttr(info->desc, a);

	if (oldnulls[a] != newnulls[a])
		return true;
	if (newnulls[a])
		return false;
	return !datumIsEqual(old[a], new[a], att->attbyval, att->attlen);
}

static bool
key_changed(RelInfo *info, KeyDef *key, Datum *old, bool *oldnulls,
			Datum *new, bool *newnulls)
{
	for (int i = 0; i < key->ncols; i++)
		if (column_changed(info, key->cols[i].attnum, old, oldnulls, new, newnulls))
			return true;
	return false;
}

/* refs of the new row: all of them for an INSERT (old == NULL), those
 * whose columns changed for an UPDATE. */
static void
put_refs(StringInfo buf, RelInfo *info, Datum *values, bool *nulls,
		 Datum *old, bool *oldnulls)
{
	int			at = buf->len;
	uint32		n = 0;
	StringInfoData key;

	initStringInfo(&key);
	put_u32(buf, 0);
	for (int i = 0; i < info->nrefs; i++)
	{
		RefDef	   *ref = &info->refs[i];

		if (old != NULL && !key_changed(info, &ref->key, old, oldnulls, values, nulls))
			continue;
		if (!render_key(&key, &ref->key, values, nulls))
			continue;
		put_str(buf, ref->parent, strlen(ref->parent));
		put_strinfo(buf, &key);
		n++;
	}
	buf->data[at] = (char) (n & 0xff);
	buf->data[at + 1] = (char) ((n >> 8) & 0xff);
	buf->data[at + 2] = (char) ((n >> 16) & 0xff);
	buf->data[at + 3] = (char) ((n >> 24) & 0xff);
}

static void
deform(RelInfo *info, HeapTuple tuple, Datum **values, bool **nulls)
{
	if (info->map != NULL)
		tuple = execute_attr_map_tuple(tuple, info->map);
	*values = palloc(sizeof(Datum) * info->desc->natts);
	*nulls = palloc(sizeof(bool) * info->desc->natts);
	heap_deform_tuple(tuple, info->desc, *values, *nulls);
}

static void
refuse_mixed_query(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("tashkent does not replicate a query string that holds DDL and other statements"),
			 errhint("Send each DDL statement as a query of its own.")));
}

/*
 * Runs fn(arg) under the fixed output settings (see the header), and with
 * an empty search path for tables whose values print names (reg* types):
 * rows and keys render the same whatever the session's settings.
 */
static void
in_canonical_settings(RelInfo *info, void (*fn) (void *), void *arg)
{
	OutputSettings saved;
	volatile bool path_pushed = false;

	settings_push(&saved);
	PG_TRY();
	{
		if (info->reg_types)
		{
			OverrideSearchPath path = {NIL, true, false, 0};

			PushOverrideSearchPath(&path);
			path_pushed = true;
		}
		fn(arg);
	}
	PG_FINALLY();
	{
		if (path_pushed)
			PopOverrideSearchPath();
		settings_pop(&saved);
	}
	PG_END_TRY();
}

/* A row change to render into an entry's body (after its table). */
typedef struct RowArgs
{
	RelInfo    *info;
	char		op;
	Datum	   *newv;
	bool	   *newn;
	Datum	   *oldv;
	bool	   *oldn;
	StringInfo	buf;
} RowArgs;

/* The body of an 'I', 'U' or 'D' entry: keys, rows, references. */
static void
render_change(void *arg)
{
	RowArgs    *a = (RowArgs *) arg;
	RelInfo    *info = a->info;
	char		op = a->op;
	Datum	   *newv = a->newv,
			   *oldv = a->oldv;
	bool	   *newn = a->newn,
			   *oldn = a->oldn;
	StringInfo	buf = a->buf;

	if (op == 'I')
	{
		RowKeys		k;
		StringInfoData row;

		row_keys(&k, info, newv, newn);
		put_strinfo(buf, &k.pk);
		initStringInfo(&row);
		render_row(&row, info, newv, newn);
		put_strinfo(buf, &row);
		put_keys(buf, &k);
		put_refs(buf, info, newv, newn, NULL, NULL);
	}
	else if (op == 'D')
	{
		RowKeys		k;
		StringInfoData row;

		row_keys(&k, info, oldv, oldn);
		put_strinfo(buf, &k.pk);
		initStringInfo(&row);
		render_row(&row, info, oldv, oldn);
		put_strinfo(buf, &row);
		put_keys(buf, &k);
	}
	else
	{
		RowKeys		nk;
		StringInfoData row;
		bool		keys_changed = false;
		bool		pk_changed;

		row_keys(&nk, info, newv, newn);
		put_strinfo(buf, &nk.pk);
		initStringInfo(&row);
		render_row(&row, info, newv, newn);
		put_strinfo(buf, &row);
		pk_changed = key_changed(info, &info->pk, oldv, oldn, newv, newn);
		for (int i = 0; i < info->nuniques && !keys_changed; i++)
			keys_changed = key_changed(info, &info->uniques[i], oldv, oldn, newv, newn);
		if (pk_changed || keys_changed)
		{
			RowKeys		ok;
			int			gone_at;
			uint32		gone = 0;

			row_keys(&ok, info, oldv, oldn);
			/* Equal bytes: the values changed but not for the index. */
			pk_changed = ok.pk.len != nk.pk.len ||
				memcmp(ok.pk.data, nk.pk.data, nk.pk.len) != 0;
			if (pk_changed)
			{
				put_strinfo(buf, &ok.pk);
				resetStringInfo(&row);
				render_row(&row, info, oldv, oldn);
				put_strinfo(buf, &row);
			}
			else
			{
				put_u32(buf, 0);
				put_u32(buf, 0);
			}
			put_keys(buf, &nk);
			gone_at = buf->len;
			put_u32(buf, 0);
			for (int i = 0; i < ok.n; i++)
				if (!key_in(&ok.uniques[i], &nk))
				{
					put_strinfo(buf, &ok.uniques[i]);
					gone++;
				}
			buf->data[gone_at] = (char) (gone & 0xff);
			buf->data[gone_at + 1] = (char) ((gone >> 8) & 0xff);
			buf->data[gone_at + 2] = (char) ((gone >> 16) & 0xff);
			buf->data[gone_at + 3] = (char) ((gone >> 24) & 0xff);
		}
		else
		{
			put_u32(buf, 0);
			put_u32(buf, 0);
			put_keys(buf, &nk);
			put_u32(buf, 0);
		}
		put_refs(buf, info, newv, newn, oldv, oldn);
	}
}

static void
capture_row(TriggerData *td)
{
	Relation	rel = td->tg_relation;
	RelInfo    *info = rel_info(rel);
	char		op;
	Datum	   *newv = NULL,
			   *oldv = NULL;
	bool	   *newn = NULL,
			   *oldn = NULL;
	StringInfoData buf;
	int			len_at;

	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		op = 'I';
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		op = 'U';
	else
		op = 'D';
	if (op != 'I' && !info->has_pk)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s on table %s is not replicated by tashkent: the table has no primary key",
						op == 'U' ? "UPDATE" : "DELETE", info->name),
				 errhint("Add a primary key; without one, tashkent replicates INSERT and TRUNCATE only.")));
	if (ws_ddl_statement != 0 && ws_ddl_statement == GetCurrentStatementStartTimestamp())
		refuse_mixed_query();
	if (info->money)
	{
		const char *now = GetConfigOption("lc_monetary", false, false);
		const char *reset = GetConfigOptionResetString("lc_monetary");

		if (strcmp(now ? now : "", reset ? reset : "") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("tashkent replicates money values only under the database's lc_monetary"),
					 errhint("RESET lc_monetary before writing table %s.", info->name)));
	}

	if (op != 'D')
		deform(info, op == 'I' ? td->tg_trigtuple : td->tg_newtuple, &newv, &newn);
	if (op != 'I')
		deform(info, td->tg_trigtuple, &oldv, &oldn);

	initStringInfo(&buf);
	appendStringInfoChar(&buf, op);
	len_at = buf.len;
	put_u32(&buf, 0);
	put_str(&buf, info->name, strlen(info->name));

	{
		RowArgs		args = {info, op, newv, newn, oldv, oldn, &buf};

		in_canonical_settings(info, render_change, &args);
	}

	patch_len(&buf, len_at);
	ws_append(buf.data, buf.len);
	pfree(buf.data);
}

Datum
tashkent_capture_row(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!TRIGGER_FIRED_AFTER(td->tg_event))
		elog(ERROR, "tashkent.capture_row() must run as an AFTER ... FOR EACH ROW trigger");
	/*
	 * Rows an extension's script writes are not captured: the client's
	 * CREATE/ALTER EXTENSION statement is replicated, and running it runs
	 * the same script on every replica.
	 */
	if (creating_extension)
		return PointerGetDatum(NULL);
	capture_row(td);
	return PointerGetDatum(NULL);
}

Datum
tashkent_capture_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	StringInfoData buf;
	int			len_at;
	char	   *name;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		elog(ERROR, "tashkent.capture_truncate() must run as an AFTER TRUNCATE trigger");
	/* As for rows: an extension's script runs on every replica. */
	if (creating_extension)
		return PointerGetDatum(NULL);
	if (ws_ddl_statement != 0 && ws_ddl_statement == GetCurrentStatementStartTimestamp())
		refuse_mixed_query();
	name = qualified_name(RelationGetRelid(td->tg_relation));
	initStringInfo(&buf);
	appendStringInfoChar(&buf, 'T');
	len_at = buf.len;
	put_u32(&buf, 0);
	put_str(&buf, name, strlen(name));
	patch_len(&buf, len_at);
	ws_append(buf.data, buf.len);
	return PointerGetDatum(NULL);
}

/* Appends a DDL entry (the JSON the event trigger built). */
Datum
tashkent_ws_append_ddl(PG_FUNCTION_ARGS)
{
	text	   *json = PG_GETARG_TEXT_PP(0);
	StringInfoData buf;
	int			len_at;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, 'X');
	len_at = buf.len;
	put_u32(&buf, 0);
	put_str(&buf, VARDATA_ANY(json), VARSIZE_ANY_EXHDR(json));
	patch_len(&buf, len_at);
	ws_append(buf.data, buf.len);
	ws_ddl_statement = GetCurrentStatementStartTimestamp();
	PG_RETURN_VOID();
}

/* The buffer, one bytea per chunk (none when nothing was captured). */
Datum
tashkent_ws_read(PG_FUNCTION_ARGS)
{
	FuncCallContext *fctx;
	WsChunk    *c;

	if (SRF_IS_FIRSTCALL())
	{
		fctx = SRF_FIRSTCALL_INIT();
		fctx->user_fctx = ws_head;
	}
	fctx = SRF_PERCALL_SETUP();
	c = (WsChunk *) fctx->user_fctx;
	while (c != NULL && c->used == 0)
		c = c->next;
	if (c != NULL)
	{
		bytea	   *out = palloc(VARHDRSZ + c->used);

		SET_VARSIZE(out, VARHDRSZ + c->used);
		memcpy(VARDATA(out), c->data, c->used);
		fctx->user_fctx = c->next;
		SRF_RETURN_NEXT(fctx, PointerGetDatum(out));
	}
	SRF_RETURN_DONE(fctx);
}

Datum
tashkent_ws_size(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64((int64) ws_len);
}

Datum
tashkent_capture_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(CAPTURE_FORMAT);
}

/*
 * True while an extension's script runs (CREATE EXTENSION, ALTER
 * EXTENSION ... UPDATE): the DDL event triggers then leave the script's
 * commands to the client's statement, which is replicated whole.
 */
Datum
tashkent_in_extension_script(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(creating_extension);
}

/* Row locks as conflict keys: the executor hook (a file of its own). */
#include "tashkent_locks.c"
