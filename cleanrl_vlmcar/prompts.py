"""Every prompt template of the generate stage, in one place.

The view documentation comes from the same `ViewSpec` tables that build the views, so what the VLM reads about
`obs` is what the program receives.
"""

from __future__ import annotations

SYSTEM = (
    "You are an expert in reinforcement learning and Python. You write small, fast, deterministic reward-check "
    "programs that read an environment's observation and decide which sub-tasks of a task are done."
)

PROGRAM_FORMAT = '''```python
import numpy as np   # optional: `np` and `math` are provided

SUBTASKS = ["first sub-task", "second sub-task", "the whole task completed"]

def subtask_1(obs, start):
    """True when sub-task 1 is achieved in the view `obs`; `start` is the view at the episode's first step."""
    ...

def subtask_2(obs, start): ...
def subtask_3(obs, start): ...   # the last sub-task is the whole task

def progress_1(obs, start):      # optional, one per sub-task at most: dense progress in [0, 1]
    ...
```'''

RULES = """- Define `SUBTASKS` as a literal list of strings and exactly one `subtask_k(obs, start)` per entry, k = 1..K.
  Optional `progress_k(obs, start)` returns a float in [0, 1]. Helper functions of your own are fine.
- Each check returns a Python or numpy bool. It must not raise: guard against missing objects.
- A sub-task counts once, the first time its check is True, and only after all earlier sub-tasks were counted;
  a check only needs to hold at the step the sub-task is achieved. Episodes may start with a sub-task (or the
  whole task) already achieved: the earlier sub-tasks must then hold too, so that the in-order count can go on.
- Checks run on every environment step: keep them fast (microseconds) and test cheap conditions first.
- Checks are pure functions of `obs` and `start`: the module level holds only `SUBTASKS`, constants (literals and
  arithmetic on the view's constants, no function calls) and functions; no default arguments; views and
  constants are read-only (copy an array before changing it); nothing is kept between calls.
- Allowed: `np`, `math`, the constants listed with the view, and these builtins: abs, all, any, bool, dict,
  divmod, enumerate, filter, float, frozenset, int, isinstance, len, list, map, max, min, pow, range, reversed,
  round, set, slice, sorted, str, sum, tuple, zip. Not allowed: other imports, `while` loops, classes, global or
  nonlocal, generators, names or strings containing a double underscore, private attributes,
  eval/exec/open/getattr and other introspection, file input/output (np.load, np.save, .tofile, ...), str.format
  (use f-strings).
- The program is verified: over {n} expert episodes every sub-task must be completed (in at least
  {expert:.0%} of them), and over {n} random-action episodes the whole task may be completed in at most
  {random:.0%} of them (or, where random play itself often succeeds, at most that rate + 5%, and then the last
  check must agree with the environment's own success). It is then verified again on fresh episodes you are not
  shown. So the checks must be exact and general: neither too strict nor too easy, and about the task, not
  about particular episodes."""

FIRST = """# Task
Write reward code for a reinforcement-learning agent in the environment `{env_id}`.

The task: **{task}**
{task_note}
The first image is the initial frame of an episode, the second the frame where an expert has just completed the
task.

# What to do
1. Split the task into a short sequence of sub-tasks (usually 2 to 5) in the order an agent must achieve them;
   the last sub-task is the whole task completed.
2. Write one check function per sub-task that returns True when the sub-task is achieved.

# What your code reads
{view_doc}

# Program format
{program_format}

# Rules
{rules}

# Answer
First list the sub-tasks in one line each, then give the whole program in exactly one ```python code block."""

FEEDBACK = """# Task
Write reward code for a reinforcement-learning agent in the environment `{env_id}`.

The task: **{task}**
{task_note}
The first image is the initial frame of an episode, the second the frame where an expert has just completed the
task.{extra_images}

# What your code reads
{view_doc}

# Program format
{program_format}

# Rules
{rules}

# Your previous program failed verification
```python
{previous_program}
```

## Verification report
{report}

# Answer
Find the cause in the report, then give the whole corrected program in exactly one ```python code block."""

REFINE = """# Task
Write reward code for a reinforcement-learning agent in the environment `{env_id}`.

The task: **{task}**
{task_note}
The first image is the initial frame of an episode, the second the frame where an expert has just completed the
task.

# The current reward program
This program passed verification, and an agent was trained with its sub-tasks paid as reward bonuses (run
`{run}`, {steps} environment steps):
```python
{current_program}
```

# What the agent learned
Fraction of recent training episodes that completed each sub-task (a sub-task counts only after every earlier
one), at the end of training and at its best:

{summary_table}

Over training (global step -> fraction of recent episodes):

{curves_table}

{stall}

# What to do
Refine the decomposition so that the agent can learn the whole task (reward reflection):
1. Keep the sub-tasks the agent has learned, and their checks, unless a check is wrong.
2. Where progress stalls, make the step smaller: insert an intermediate sub-task before the stalled one (a state
   the agent passes through on the way to it and can reach more often, for instance standing next to or facing
   the object it must use), or split the stalled sub-task into two.
3. The last sub-task stays the whole task completed. Keep the list short (at most about 6 sub-tasks).
4. The refined program is verified like any other: every check must hold in expert episodes, in order.

# What your code reads
{view_doc}

# Program format
{program_format}

# Rules
{rules}

# Answer
First list the refined sub-tasks in one line each, marking the new or changed ones, then give the whole program in
exactly one ```python code block."""
