//! Splice points: where a compiled stage takes rows the engine hands it, instead of a table.
//!
//! A continuous query is cut into stages (see `compile`). Each stage's plan has one leaf, a
//! [`SpliceNode`] with exactly the schema of the subtree it replaced, so every column reference
//! above it still resolves. It is planned into a [`SpliceExec`], whose slot the engine fills
//! before each execution of the stage's physical plan.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, Result};
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

/// Logical leaf standing for rows supplied by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpliceNode {
    pub schema: DFSchemaRef,
}

impl SpliceNode {
    pub(crate) fn plan(schema: DFSchemaRef) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(SpliceNode { schema }),
        })
    }
}

impl Hash for SpliceNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.schema.fields().len().hash(state);
        for f in self.schema.fields() {
            f.name().hash(state);
        }
    }
}

impl PartialOrd for SpliceNode {
    fn partial_cmp(&self, _other: &Self) -> Option<std::cmp::Ordering> {
        None
    }
}

impl UserDefinedLogicalNodeCore for SpliceNode {
    fn name(&self) -> &str {
        "Splice"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Splice: {} columns", self.schema.fields().len())
    }
    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, _inputs: Vec<LogicalPlan>) -> Result<Self> {
        Ok(self.clone())
    }
}

/// Batches handed to a [`SpliceExec`] for its next execution.
pub(crate) type Slot = Arc<Mutex<Vec<RecordBatch>>>;

/// Physical leaf that yields whatever the engine last put in its slot (once).
#[derive(Debug)]
pub(crate) struct SpliceExec {
    schema: SchemaRef,
    pub slot: Slot,
    properties: Arc<PlanProperties>,
}

impl SpliceExec {
    pub(crate) fn new(schema: SchemaRef) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            schema,
            slot: Arc::default(),
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for SpliceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpliceExec")
    }
}

impl ExecutionPlan for SpliceExec {
    fn name(&self) -> &str {
        "SpliceExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }
    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batches = std::mem::take(&mut *self.slot.lock().expect("splice slot"));
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            self.schema.clone(),
            None,
        )?))
    }
}

struct SplicePlanner;

#[async_trait]
impl ExtensionPlanner for SplicePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        _physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        Ok(node.as_any().downcast_ref::<SpliceNode>().map(|n| {
            Arc::new(SpliceExec::new(Arc::new(n.schema.as_arrow().clone())))
                as Arc<dyn ExecutionPlan>
        }))
    }
}

/// Plans an already optimized logical plan whose leaves are [`SpliceNode`]s.
pub(crate) async fn physical_plan(
    plan: &LogicalPlan,
    state: &SessionState,
) -> Result<Arc<dyn ExecutionPlan>> {
    let planner = DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(SplicePlanner)]);
    planner.create_physical_plan(plan, state).await
}

/// The slots (and row schemas) of the splice leaves of `plan`, in depth-first order.
pub(crate) fn slots(plan: &Arc<dyn ExecutionPlan>) -> Vec<(Slot, SchemaRef)> {
    let mut out = Vec::new();
    fn walk(p: &Arc<dyn ExecutionPlan>, out: &mut Vec<(Slot, SchemaRef)>) {
        if let Some(s) = p.downcast_ref::<SpliceExec>() {
            out.push((s.slot.clone(), s.schema.clone()));
        }
        for c in p.children() {
            walk(c, out);
        }
    }
    walk(plan, &mut out);
    out
}
