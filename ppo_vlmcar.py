# PPO with VLM-CaR rewards, single-file in the style of CleanRL's ppo.py (discrete actions; MiniGrid first).
# Usage: python ppo_vlmcar.py --env-id MiniGrid-KeyCorridorS3R1-v0 [--reward sparse|vlmcar|clip]
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import gymnasium as gym
import minigrid  # noqa: F401 - registers the MiniGrid envs
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter

from cleanrl_vlmcar.errors import VLMCaRError  # VLM-CaR
from cleanrl_vlmcar.families import import_env_modules  # VLM-CaR: imports the package that registers an env id
from cleanrl_vlmcar.rewards import make_reward_hook  # VLM-CaR


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=False`"""
    cuda: bool = True
    """if toggled, cuda will be enabled by default"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "cleanRL"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to capture videos of the agent performances (check out `videos` folder)"""
    save_model: bool = False
    """whether to save model into the `runs/{run_name}` folder"""

    # Algorithm specific arguments
    env_id: str = "MiniGrid-KeyCorridorS3R1-v0"
    """the id of the environment"""
    total_timesteps: int = 300000
    """total timesteps of the experiments"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer"""
    num_envs: int = 8
    """the number of parallel game environments"""
    num_steps: int = 128
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """Toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """Toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """Toggles whether or not to use a clipped loss for the value function, as per the paper."""
    ent_coef: float = 0.01
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: Optional[float] = None
    """the target KL divergence threshold"""

    # VLM-CaR arguments
    reward: Literal["sparse", "vlmcar", "clip"] = "vlmcar"
    """reward variant: the env's sparse reward, + verified VLM-CaR sub-task bonuses, or a CLIP reward"""
    view: str = "state"
    """the view the reward program reads (not the policy input): state or pixels; obs or pixels for other envs"""
    reward_program: Optional[str] = None
    """a reward program file to verify at startup and train on (default: the verified program in reward_cache/)"""
    require_confinement: bool = False
    """fail when the kernel lacks Landlock or seccomp for the program worker (default: warn, rlimits only)"""
    torch_threads: int = 0
    """torch threads on CPU (0: one, the fastest for these small networks, above all on a busy machine)"""
    vlm: Optional[Literal["openai", "hf", "manual", "cache"]] = None
    """VLM backend to synthesize a program when reward_cache/ has none (default: cached programs only)"""
    vlm_model: str = ""
    """VLM model name (openai) or hub id / local path (hf)"""
    vlm_base_url: Optional[str] = None
    """OpenAI-compatible endpoint (default $OPENAI_BASE_URL)"""
    bonus: float = 1.0
    """reward bonus for each completed sub-task"""
    shaping: Literal["bonus", "potential"] = "bonus"
    """bonus: +bonus per completed sub-task; potential: gamma*Phi(s')-Phi(s), Phi = bonus x completed"""
    use_progress: bool = False
    """add the program's progress_k functions to the potential (needs --shaping potential)"""
    clip_model: str = "openai/clip-vit-base-patch32"
    """CLIP checkpoint (hub id or local path) for --reward clip"""
    clip_temperature: float = 0.01
    """softmax temperature over CLIP cosine similarities"""
    clip_threshold: float = 0.5
    """CLIP reward is 1 when p(goal | frame) exceeds this"""
    clip_mode: Literal["binary", "vlmrm"] = "binary"
    """binary (Baumli et al.) or vlmrm (goal-baseline regularisation)"""
    clip_alpha: float = 0.5
    """vlmrm: weight of the goal-baseline projection"""
    clip_template: Optional[str] = None
    """CLIP goal text template with {mission} (default: one per env family, see cleanrl_vlmcar/clip_reward.py)"""
    clip_negatives: Optional[tuple[str, ...]] = None
    """CLIP negative texts, put through the template (one with {mission} is a whole sentence; default: per family)"""
    clip_fp16: bool = False
    """run CLIP in half precision (GPU only)"""
    clip_end_episode: bool = False
    """end the episode when the CLIP reward fires, as in Baumli et al. (binary mode)"""
    subtask_obs: bool = False
    """the policy also sees the program's next sub-task (one-hot), as agents of reward machines see the machine's
    state (needs --reward vlmcar; the hook then answers every step before the next action)"""

    # to be filled in runtime
    batch_size: int = 0
    """the batch size (computed in runtime)"""
    minibatch_size: int = 0
    """the mini-batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


def make_env(env_id, idx, capture_video, run_name):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        if isinstance(env.observation_space, gym.spaces.Dict) and "image" in env.observation_space.spaces:
            env = minigrid.wrappers.ImgObsWrapper(env)  # the policy sees the agent's own 7x7x3 partial view
        elif isinstance(env.observation_space, (gym.spaces.Dict, gym.spaces.Tuple)):
            env = gym.wrappers.FlattenObservation(env)  # other structured observations: one vector
        env = gym.wrappers.RecordEpisodeStatistics(env)
        return env

    return thunk


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, envs, num_stages=0):
        super().__init__()
        space = envs.single_observation_space
        # MiniGrid's symbolic view (object, colour, state per cell) is categorical: one-hot it; else flatten
        self.minigrid = space.shape[-1:] == (3,) and space.dtype == np.uint8 and len(space.shape) == 3
        self.flat = len(space.shape) == 1  # already a vector: no feature step at all
        if self.minigrid:
            self.register_buffer("offsets", torch.tensor([0, 11, 17]))  # 11 objects, 6 colours, 3 states
            in_dim = int(np.prod(space.shape[:-1])) * 20
        else:
            in_dim = int(np.prod(space.shape))
        in_dim += num_stages  # VLM-CaR: --subtask-obs appends the next sub-task (one-hot) to the features
        self.critic = nn.Sequential(
            layer_init(nn.Linear(in_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(in_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, envs.single_action_space.n), std=0.01),
        )

    def features(self, x, stage=None):
        if self.flat:
            h = x
        elif self.minigrid:
            idx = (x.long().clamp(max=10) + self.offsets).flatten(1, 2)  # (B, cells, 3) indices into 20 slots
            onehot = torch.zeros(idx.shape[0], idx.shape[1], 20, device=x.device)
            h = onehot.scatter_(2, idx, 1.0).flatten(1)
        else:
            h = x.flatten(1)
        return h if stage is None else torch.cat([h, stage], 1)

    def forward(self, x):
        return self.actor(self.features(x))  # action logits (what the saved TorchScript policy computes)

    def get_value(self, x, stage=None):
        return self.critic(self.features(x, stage))

    def get_action_and_value(self, x, action=None, stage=None):
        h = self.features(x, stage)
        logits = self.actor(h)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(h)


def subtask_one_hot(reward_hook, num_stages, device):
    """VLM-CaR (--subtask-obs): each env's next sub-task, one-hot (all done = the last slot)."""
    return nn.functional.one_hot(torch.as_tensor(reward_hook.next_subtask), num_stages).float().to(device)


if __name__ == "__main__":
    args = tyro.cli(Args)
    for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs"):  # flags that cannot work: say so
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.num_iterations < 1:
        raise SystemExit(f"error: --total-timesteps {args.total_timesteps} is less than one rollout (--num-envs x "
                         f"--num-steps = {args.batch_size}): nothing would be trained")
    if args.subtask_obs and args.reward != "vlmcar":
        raise SystemExit("error: --subtask-obs needs --reward vlmcar: the policy sees the program's progress")
    run_name = f"{args.env_id}__{args.exp_name}-{args.reward}__{args.seed}__{int(time.time())}"

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if device.type == "cpu":  # 64-unit MLPs: one thread beats several (measured: 74 vs 1,300 SPS on a busy machine)
        torch.set_num_threads(args.torch_threads or 1)

    # env setup (before the run folder is made, so a bad env id or action space leaves nothing behind)
    import_env_modules(args.env_id)
    try:
        envs = gym.vector.SyncVectorEnv(
            [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        )
    except gym.error.Error as e:  # an unknown id, a missing dependency (--capture-video needs moviepy), ...
        raise SystemExit(f"error: cannot create environment {args.env_id!r}: {e} (an env of another package: "
                         "MODULE:ENV_ID imports MODULE first)")
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        envs.close()
        raise SystemExit(f"error: {args.env_id} has {envs.single_action_space} actions; ppo_vlmcar.py needs a "
                         "discrete action space: use sac_vlmcar.py for continuous actions")

    if args.track:
        try:
            import wandb
        except ImportError:
            envs.close()
            raise SystemExit("error: --track needs Weights and Biases: pip install wandb")

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            monitor_gym=True,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )
    with open(f"runs/{run_name}/args.json", "w") as f:
        json.dump(asdict(args), f, indent=2)

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape).to(device)
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)
    # per-step flags are kept in numpy and moved to torch once per rollout
    rewards = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    terms = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)  # episode ended by termination at this step
    dones = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)  # ended by termination or truncation
    valid = np.zeros((args.num_steps, args.num_envs), dtype=bool)  # False on gymnasium 1.x's autoreset steps
    values = torch.zeros((args.num_steps, args.num_envs)).to(device)

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs, infos = envs.reset(seed=args.seed)
    try:
        reward_hook = make_reward_hook(envs, args, writer, infos, next_obs)  # VLM-CaR: verified program -> hook
    except VLMCaRError as e:  # no program, unsupported env or view, backend failure: stop before training
        envs.close()
        writer.close()
        shutil.rmtree(f"runs/{run_name}", ignore_errors=True)
        raise SystemExit(f"error: {e}")
    # VLM-CaR (--subtask-obs): the policy's extra input, the next sub-task one-hot
    num_stages = reward_hook.num_subtasks + 1 if args.subtask_obs else 0
    stages = torch.zeros((args.num_steps, args.num_envs, num_stages)).to(device)
    next_stage = subtask_one_hot(reward_hook, num_stages, device) if args.subtask_obs else None
    agent = Agent(envs, num_stages).to(device)  # built once the hook knows the program's sub-tasks
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    next_obs = torch.Tensor(next_obs).to(device)
    next_done = np.zeros(args.num_envs, dtype=bool)

    for iteration in range(1, args.num_iterations + 1):
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            lrnow = frac * args.learning_rate
            optimizer.param_groups[0]["lr"] = lrnow

        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            if args.subtask_obs:
                stages[step] = next_stage
            # next-step autoreset: an env that ended on the previous step is reset on this one; its action is
            # ignored, so the transition is not learned from
            valid[step] = ~next_done

            # ALGO LOGIC: action logic
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs, stage=next_stage)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            # VLM-CaR: the verified reward hook. This step's views go to the program's confined worker, which checks
            # them while the rollout goes on; the shaped rewards come back after the rollout (flush)
            if not args.subtask_obs:
                reward_hook.submit(reward, terminations, truncations, infos, next_obs)
            else:  # the next action depends on the program's answer: wait for it
                rewards[step] = reward_hook.step(reward, terminations, truncations, infos, obs=next_obs)
                next_stage = subtask_one_hot(reward_hook, num_stages, device)
            next_done = np.logical_or(terminations, truncations)
            terms[step], dones[step] = terminations, next_done
            next_obs = torch.Tensor(next_obs).to(device)

            if "episode" in infos:
                for i in np.nonzero(infos["_episode"])[0]:
                    writer.add_scalar("charts/episodic_return", infos["episode"]["r"][i], global_step)
                    writer.add_scalar("charts/episodic_length", infos["episode"]["l"][i], global_step)

        if not args.subtask_obs:
            rewards[:] = reward_hook.flush()  # VLM-CaR: env reward + verified sub-task bonuses of every rollout step

        # bootstrap value if not done
        rewards_t = torch.from_numpy(rewards).to(device)
        nonterminal = torch.from_numpy(1.0 - terms).to(device)
        notdone = torch.from_numpy(1.0 - dones).to(device)
        with torch.no_grad():
            next_value = agent.get_value(next_obs, next_stage).reshape(1, -1)
            advantages = torch.zeros_like(rewards_t)
            lastgaelam = 0
            for t in reversed(range(args.num_steps)):
                # after an episode ends, the next stored observation is its true final observation (next-step
                # autoreset), so truncated episodes bootstrap from it and terminated ones do not
                nextvalues = next_value if t == args.num_steps - 1 else values[t + 1]
                delta = rewards_t[t] + args.gamma * nextvalues * nonterminal[t] - values[t]
                advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * notdone[t] * lastgaelam
            returns = advantages + values

        # flatten the batch, keeping only real transitions
        keep = torch.from_numpy(valid.reshape(-1)).to(device)
        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)[keep]
        b_logprobs = logprobs.reshape(-1)[keep]
        b_actions = actions.reshape((-1,) + envs.single_action_space.shape)[keep]
        b_advantages = advantages.reshape(-1)[keep]
        b_returns = returns.reshape(-1)[keep]
        b_values = values.reshape(-1)[keep]
        b_stages = stages.reshape(-1, num_stages)[keep] if args.subtask_obs else None

        # Optimizing the policy and value network
        b_inds = np.arange(len(b_obs))
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for mb_inds in np.array_split(b_inds, args.num_minibatches):  # the batch size varies with the mask

                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    b_obs[mb_inds], b_actions.long()[mb_inds], None if b_stages is None else b_stages[mb_inds]
                )
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()

                with torch.no_grad():
                    # calculate approx_kl http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]

                mb_advantages = b_advantages[mb_inds]
                if args.norm_adv and len(mb_inds) > 1:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                # Policy loss
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                # Value loss
                newvalue = newvalue.view(-1)
                if args.clip_vloss:
                    v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(
                        newvalue - b_values[mb_inds],
                        -args.clip_coef,
                        args.clip_coef,
                    )
                    v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                    v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
                    v_loss = 0.5 * v_loss_max.mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        print("SPS:", int(global_step / (time.time() - start_time)))
        if iteration % 10 == 0:
            print(reward_hook.status())  # VLM-CaR: success rate, episodic return, sub-task rates
        writer.add_scalar("charts/SPS", int(global_step / (time.time() - start_time)), global_step)

    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.cleanrl_model"
        torch.save(agent.state_dict(), model_path)
        # a TorchScript copy (observation -> action logits) that loads without this file's classes; not with
        # --subtask-obs, whose policy also needs the program's progress, which only the reward hook computes
        if not args.subtask_obs:
            example = torch.zeros((1,) + envs.single_observation_space.shape)
            torch.jit.trace(agent.cpu(), example).save(f"runs/{run_name}/policy.pt")
        print(f"model saved to {model_path}")

    reward_hook.close()  # VLM-CaR: stop the confined program worker
    envs.close()
    writer.close()
