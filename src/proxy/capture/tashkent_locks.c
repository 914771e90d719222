/*
 * Row locks as conflict keys: part of tashkent_capture.c (included at its
 * end, sharing its buffer, table cache and key rendering).
 *
 * SELECT ... FOR UPDATE / FOR NO KEY UPDATE locks a row on one replica
 * only; to make "lock a row as a mutex" hold across the cluster, every row
 * such a lock takes becomes an 'L' entry (table, primary key), which the
 * proxy certifies as a key the transaction wrote (first committer wins).
 *
 * Locks fire no trigger, so the library hooks the executor: after
 * ExecutorStart, every LockRows node of a plan that has row marks gets its
 * ExecProcNode wrapped; each row the node returns is locked, and for each
 * of its exclusive row marks (FOR UPDATE, FOR NO KEY UPDATE; not FOR
 * SHARE / FOR KEY SHARE) the locked tuple is the one the node left in its
 * EvalPlanQual slot (fetched by the mark's ctid should it be empty). A
 * statement without row marks costs one test per ExecutorStart.
 *
 * Not recorded: rows of tables without the capture trigger (not
 * replicated), rows this transaction itself inserted or updated (their
 * key is written already), anything in the applier (session replication
 * role "replica") or in an extension's script. A table without a primary
 * key gives an entry with an empty key: the proxy keys it by the table.
 *
 * The library must be loaded before the client's first statement runs:
 * the proxy's opening query of every transaction calls
 * tashkent.capture_version(), which loads it.
 */

#include "executor/executor.h"
#include "nodes/nodeFuncs.h"
#include "utils/snapmgr.h"

static ExecutorStart_hook_type prev_executor_start = NULL;

/* What LockRows nodes run (nodeLockRows.c's static ExecLockRows), taken
 * from the first one wrapped. */
static ExecProcNodeMtd lockrows_exec = NULL;

/* Whether the relation carries the row capture trigger (is replicated;
 * partitions carry a clone of their root's). */
static bool
has_capture_trigger(Relation rel)
{
	TriggerDesc *td = rel->trigdesc;

	if (td == NULL)
		return false;
	for (int i = 0; i < td->numtriggers; i++)
		if (td->triggers[i].tgenabled != TRIGGER_DISABLED &&
			strcmp(td->triggers[i].tgname, "tashkent_capture") == 0)
			return true;
	return false;
}

/* A locked row's primary key to render (render_lock_key). */
typedef struct LockArgs
{
	RelInfo    *info;
	Datum	   *values;
	bool	   *nulls;
	StringInfo	pk;
} LockArgs;

static void
render_lock_key(void *arg)
{
	LockArgs   *a = (LockArgs *) arg;

	if (!a->info->has_pk || !render_key(a->pk, &a->info->pk, a->values, a->nulls))
		resetStringInfo(a->pk);
}

/* Appends the 'L' entry of the locked tuple `tuple` of `rel`. */
static void
capture_lock(Relation rel, HeapTuple tuple)
{
	RelInfo    *info = rel_info(rel);
	StringInfoData buf;
	StringInfoData pk;
	LockArgs	args = {info, NULL, NULL, &pk};
	int			len_at;

	deform(info, tuple, &args.values, &args.nulls);
	initStringInfo(&pk);
	/* The key as the row trigger renders it: equal rows, equal keys. */
	in_canonical_settings(info, render_lock_key, &args);

	initStringInfo(&buf);
	appendStringInfoChar(&buf, 'L');
	len_at = buf.len;
	put_u32(&buf, 0);
	put_str(&buf, info->name, strlen(info->name));
	put_strinfo(&buf, &pk);
	patch_len(&buf, len_at);
	ws_append(buf.data, buf.len);
}

/* Where a locked row is rendered: reset after each row (the executor's
 * own context would keep every row's until the statement ends). */
static MemoryContext lock_cxt = NULL;

/* Records the rows `node` locked for the row it just returned. */
static void
capture_locked_rows(LockRowsState *node)
{
	ListCell   *lc;
	MemoryContext old;

	if (creating_extension || SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
		return;
	if (lock_cxt == NULL)
		lock_cxt = AllocSetContextCreate(TopMemoryContext, "tashkent lock capture",
										 ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(lock_cxt);
	foreach(lc, node->lr_arowMarks)
	{
		ExecAuxRowMark *aerm = (ExecAuxRowMark *) lfirst(lc);
		ExecRowMark *erm = aerm->rowmark;
		Relation	rel = erm->relation;
		TupleTableSlot *slot;
		HeapTuple	tuple;
		bool		should_free;

		if (erm->markType != ROW_MARK_EXCLUSIVE && erm->markType != ROW_MARK_NOKEYEXCLUSIVE)
			continue;
		/* A child of an inheritance tree that did not produce this row. */
		if (!erm->ermActive || !ItemPointerIsValid(&erm->curCtid) || rel == NULL)
			continue;
		if (rel->rd_rel->relkind != RELKIND_RELATION || !has_capture_trigger(rel))
			continue;
		slot = EvalPlanQualSlot(&node->lr_epqstate, rel, erm->rti);
		if (TTS_EMPTY(slot) &&
			!table_tuple_fetch_row_version(rel, &erm->curCtid, SnapshotAny, slot))
			continue;
		tuple = ExecFetchSlotHeapTuple(slot, false, &should_free);
		/* Inserted or updated by this transaction: a written key already. */
		if (!TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tuple->t_data)))
			capture_lock(rel, tuple);
		if (should_free)
			heap_freetuple(tuple);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(lock_cxt);
}

static TupleTableSlot *
lockrows_capture(PlanState *ps)
{
	TupleTableSlot *slot = lockrows_exec(ps);

	if (!TupIsNull(slot))
		capture_locked_rows((LockRowsState *) ps);
	return slot;
}

/* Wraps the LockRows nodes of a plan-state tree (before they first run:
 * ExecProcNodeFirst then installs ExecProcNodeReal). */
static bool
wrap_lockrows(PlanState *ps, void *context)
{
	if (ps == NULL)
		return false;
	if (IsA(ps, LockRowsState) && ps->ExecProcNodeReal != lockrows_capture)
	{
		if (lockrows_exec == NULL)
			lockrows_exec = ps->ExecProcNodeReal;
		/* Another extension's wrapper: leave it be rather than lose it. */
		if (ps->ExecProcNodeReal == lockrows_exec)
			ps->ExecProcNodeReal = lockrows_capture;
	}
	return planstate_tree_walker(ps, wrap_lockrows, context);
}

static void
tashkent_executor_start(QueryDesc *qd, int eflags)
{
	ListCell   *lc;

	if (prev_executor_start != NULL)
		prev_executor_start(qd, eflags);
	else
		standard_ExecutorStart(qd, eflags);
	if (qd->plannedstmt->rowMarks == NIL || (eflags & EXEC_FLAG_EXPLAIN_ONLY) ||
		qd->planstate == NULL)
		return;
	wrap_lockrows(qd->planstate, NULL);
	/* CTEs and other subplans (the walker reaches those of init plans). */
	foreach(lc, qd->estate->es_subplanstates)
		wrap_lockrows((PlanState *) lfirst(lc), NULL);
}

static void
install_lock_capture(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = tashkent_executor_start;
}
