# SAC with VLM-CaR rewards, single-file in the style of CleanRL's sac_continuous_action.py (continuous actions;
# panda-gym first). Usage: python sac_vlmcar.py --env-id PandaPush-v3 [--reward sparse|vlmcar|clip]
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import panda_gym  # noqa: F401 - registers the panda-gym envs
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import tyro
from torch.utils.tensorboard import SummaryWriter

from cleanrl_vlmcar.errors import VLMCaRError  # VLM-CaR
from cleanrl_vlmcar.families import import_env_modules  # VLM-CaR: imports the package that registers an env id
from cleanrl_vlmcar.her import HindsightRelabeller, check_her  # VLM-CaR
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
    env_id: str = "PandaPush-v3"
    """the id of the environment"""
    total_timesteps: int = 200000
    """total timesteps of the experiments (CleanRL: 1e6, for MuJoCo; 4000 panda-gym episodes of 50 steps)"""
    num_envs: int = 1
    """the number of parallel game environments"""
    buffer_size: int = int(1e6)
    """the replay memory buffer size"""
    gamma: float = 0.95
    """the discount factor gamma (CleanRL: 0.99; 0.95 suits panda-gym's 50-step episodes, as in rl-zoo)"""
    tau: float = 0.005
    """target smoothing coefficient (default: 0.005)"""
    batch_size: int = 256
    """the batch size of sample from the reply memory"""
    learning_starts: int = 1000
    """timestep to start learning (CleanRL: 5e3; 20 random panda-gym episodes are enough to start)"""
    policy_lr: float = 3e-4
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q network network optimizer"""
    policy_frequency: int = 2
    """the frequency of training policy (delayed)"""
    target_network_frequency: int = 1  # Denis Yarats' implementation delays this by 2.
    """the frequency of updates for the target nerworks"""
    alpha: float = 0.2
    """Entropy regularization coefficient."""
    autotune: bool = True
    """automatic tuning of the entropy coefficient"""

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
    her: bool = False
    """hindsight experience replay (goal-conditioned envs): relabelled copies of each transition, rewards recomputed"""
    her_k: int = 4
    """--her: relabelled copies per transition, goals achieved later in the same episode (future strategy)"""


class GoalObservation(gym.ObservationWrapper):
    """The policy input of a goal-conditioned env: `observation` and `desired_goal` concatenated into one vector
    (`achieved_goal` repeats part of `observation` in panda-gym and is left out; it goes into `info`, for --her)."""

    def __init__(self, env):
        super().__init__(env)
        spaces = [env.observation_space["observation"], env.observation_space["desired_goal"]]
        self.observation_space = gym.spaces.Box(
            low=np.concatenate([s.low.ravel() for s in spaces]),
            high=np.concatenate([s.high.ravel() for s in spaces]),
            dtype=np.float32,
        )

    def observation(self, obs):
        return np.concatenate([obs["observation"].ravel(), obs["desired_goal"].ravel()]).astype(np.float32)

    def reset(self, **kwargs):  # VLM-CaR: the achieved goal goes into info, for --her
        obs, info = self.env.reset(**kwargs)
        return self.observation(obs), {**info, "achieved_goal": obs["achieved_goal"]}

    def step(self, action):  # VLM-CaR: the achieved goal goes into info, for --her
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.observation(obs), reward, terminated, truncated, {**info, "achieved_goal": obs["achieved_goal"]}


def make_env(env_id, seed, idx, capture_video, run_name, render=False):
    def thunk():
        if (capture_video and idx == 0) or render:
            env = gym.make(env_id, render_mode="rgb_array")  # the raw env stays innermost: reward views read it
        else:
            env = gym.make(env_id)
        if capture_video and idx == 0:
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        if not isinstance(env.action_space, gym.spaces.Box):
            return env  # not for SAC: refused with a clear message once the vector env exists
        space = env.observation_space
        if isinstance(space, gym.spaces.Dict) and {"observation", "desired_goal"} <= set(space.spaces):
            env = GoalObservation(env)
        elif isinstance(space, gym.spaces.Dict):
            env = gym.wrappers.FlattenObservation(env)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed)
        return env

    return thunk


# ALGO LOGIC: initialize agent here:
class SoftQNetwork(nn.Module):
    def __init__(self, env):
        super().__init__()
        self.fc1 = nn.Linear(
            np.array(env.single_observation_space.shape).prod() + np.prod(env.single_action_space.shape),
            256,
        )
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


LOG_STD_MAX = 2
LOG_STD_MIN = -5


class Actor(nn.Module):
    def __init__(self, env):
        super().__init__()
        self.fc1 = nn.Linear(np.array(env.single_observation_space.shape).prod(), 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc_mean = nn.Linear(256, np.prod(env.single_action_space.shape))
        self.fc_logstd = nn.Linear(256, np.prod(env.single_action_space.shape))
        # action rescaling
        self.register_buffer(
            "action_scale",
            torch.tensor((env.single_action_space.high - env.single_action_space.low) / 2.0, dtype=torch.float32),
        )
        self.register_buffer(
            "action_bias",
            torch.tensor((env.single_action_space.high + env.single_action_space.low) / 2.0, dtype=torch.float32),
        )

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        mean = self.fc_mean(x)
        log_std = self.fc_logstd(x)
        log_std = torch.tanh(log_std)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)  # From SpinUp / Denis Yarats

        return mean, log_std

    def get_action(self, x):
        mean, log_std = self(x)
        std = log_std.exp()
        normal = torch.distributions.Normal(mean, std)
        x_t = normal.rsample()  # for reparameterization trick (mean + std * N(0,1))
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = normal.log_prob(x_t)
        # Enforcing Action Bound
        log_prob -= torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)
        log_prob = log_prob.sum(1, keepdim=True)
        mean = torch.tanh(mean) * self.action_scale + self.action_bias
        return action, log_prob, mean


class DeterministicPolicy(nn.Module):
    """What the saved TorchScript policy computes: observation -> tanh(mean) scaled to the action space."""

    def __init__(self, actor):
        super().__init__()
        self.actor = actor

    def forward(self, x):
        mean, _ = self.actor(x)
        return torch.tanh(mean) * self.actor.action_scale + self.actor.action_bias


class ReplayBuffer:
    """A ring buffer of transitions (obs, action, reward, next_obs, done) in numpy arrays. `done` is 1 only on
    termination: a truncated episode's last transition keeps done = 0, so its true final observation is
    bootstrapped from."""

    def __init__(self, buffer_size, obs_dim, action_dim, device):
        self.buffer_size, self.device = buffer_size, device
        self.observations = np.zeros((buffer_size, obs_dim), dtype=np.float32)
        self.next_observations = np.zeros((buffer_size, obs_dim), dtype=np.float32)
        self.actions = np.zeros((buffer_size, action_dim), dtype=np.float32)
        self.rewards = np.zeros((buffer_size, 1), dtype=np.float32)
        self.dones = np.zeros((buffer_size, 1), dtype=np.float32)
        self.pos, self.full = 0, False

    def add(self, obs, next_obs, actions, rewards, dones):
        n = len(obs)
        inds = (self.pos + np.arange(n)) % self.buffer_size
        self.observations[inds] = obs
        self.next_observations[inds] = next_obs
        self.actions[inds] = actions
        self.rewards[inds, 0] = rewards
        self.dones[inds, 0] = dones
        self.full = self.full or self.pos + n >= self.buffer_size
        self.pos = (self.pos + n) % self.buffer_size

    def __len__(self):
        return self.buffer_size if self.full else self.pos

    def sample(self, batch_size):
        inds = np.random.randint(0, len(self), size=batch_size)
        return [
            torch.as_tensor(a[inds], device=self.device)
            for a in (self.observations, self.actions, self.next_observations, self.rewards, self.dones)
        ]


if __name__ == "__main__":
    args = tyro.cli(Args)
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "policy_frequency",
                 "target_network_frequency"):  # flags that cannot work: say so
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    run_name = f"{args.env_id}__{args.exp_name}-{args.reward}__{args.seed}__{int(time.time())}"

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if device.type == "cpu":  # 256-unit MLPs: one thread beats several (by 10x+ when the cores are busy)
        torch.set_num_threads(args.torch_threads or 1)

    # env setup (before the run folder is made, so a bad env id or action space leaves nothing behind)
    render = args.view == "pixels" or args.reward == "clip"  # the reward reads rendered frames
    import_env_modules(args.env_id)
    try:
        envs = gym.vector.SyncVectorEnv(
            [
                make_env(args.env_id, args.seed + i, i, args.capture_video, run_name, render)
                for i in range(args.num_envs)
            ],
        )
    except gym.error.Error as e:  # an unknown id, a missing dependency (--capture-video needs moviepy), ...
        hint = " (panda-gym ids look like PandaPush-v3)" if isinstance(e, gym.error.UnregisteredEnv) else ""
        raise SystemExit(f"error: cannot create environment {args.env_id!r}: {e}{hint}")
    if args.her:  # VLM-CaR: a goal-conditioned env, and a reward HER can recompute (state view, bonus shaping)
        try:
            check_her(envs, args.reward, args.view, args.shaping, args.her_k)
        except VLMCaRError as e:
            envs.close()
            raise SystemExit(f"error: {e}")
    if not isinstance(envs.single_action_space, gym.spaces.Box):
        envs.close()
        raise SystemExit(
            f"error: {args.env_id} has a {type(envs.single_action_space).__name__} action space; "
            "sac_vlmcar.py needs a continuous action space; use ppo_vlmcar.py"
        )

    envs.single_action_space.seed(args.seed)  # the random actions before learning_starts

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

    actor = Actor(envs).to(device)
    qf1 = SoftQNetwork(envs).to(device)
    qf2 = SoftQNetwork(envs).to(device)
    qf1_target = SoftQNetwork(envs).to(device)
    qf2_target = SoftQNetwork(envs).to(device)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    # fused Adam: the same update in one kernel per step instead of one op per parameter (CleanRL uses the default,
    # which profiled at ~12% of SAC's CPU time here)
    q_optimizer = optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr, fused=True)
    actor_optimizer = optim.Adam(list(actor.parameters()), lr=args.policy_lr, fused=True)

    # Automatic entropy tuning
    if args.autotune:
        target_entropy = -torch.prod(torch.Tensor(envs.single_action_space.shape).to(device)).item()
        log_alpha = torch.zeros(1, requires_grad=True, device=device)
        alpha = log_alpha.exp().item()
        a_optimizer = optim.Adam([log_alpha], lr=args.q_lr, fused=True)
    else:
        alpha = args.alpha

    rb = ReplayBuffer(
        args.buffer_size,
        int(np.prod(envs.single_observation_space.shape)),
        int(np.prod(envs.single_action_space.shape)),
        device,
    )
    start_time = time.time()

    # TRY NOT TO MODIFY: start the game
    obs, infos = envs.reset(seed=args.seed)
    try:
        reward_hook = make_reward_hook(envs, args, writer, infos, obs)  # VLM-CaR: verified program -> hook
        her = HindsightRelabeller(envs, reward_hook, args.her_k, args.bonus, args.seed,  # VLM-CaR: --her
                                  args.require_confinement) if args.her else None
    except VLMCaRError as e:  # no program, unsupported env or view, backend failure: stop before training
        envs.close()
        writer.close()
        shutil.rmtree(f"runs/{run_name}", ignore_errors=True)
        raise SystemExit(f"error: {e}")
    # next-step autoreset: an env that ended on the previous step is reset on this one; its action is ignored and
    # its reward is 0, so that transition never enters the replay buffer
    autoreset = np.zeros(args.num_envs, dtype=bool)
    actor_loss = alpha_loss = None
    # global_step counts environment steps (num_envs per iteration), as in ppo_vlmcar.py and the reward hook's
    # charts; there is one gradient step per iteration, as in CleanRL
    global_step = 0
    for iteration in range(1, args.total_timesteps // args.num_envs + 1):
        global_step += args.num_envs
        # ALGO LOGIC: put action logic here
        if global_step <= args.learning_starts:
            actions = np.array([envs.single_action_space.sample() for _ in range(envs.num_envs)])
        else:
            actions, _, _ = actor.get_action(torch.Tensor(obs).to(device))
            actions = actions.detach().cpu().numpy()

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        rewards = reward_hook.step(rewards, terminations, truncations, infos, obs=next_obs)  # VLM-CaR: + bonuses

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        if "episode" in infos:
            for i in np.nonzero(infos["_episode"])[0]:
                print(f"global_step={global_step}, episodic_return={infos['episode']['r'][i]}")
                writer.add_scalar("charts/episodic_return", infos["episode"]["r"][i], global_step)
                writer.add_scalar("charts/episodic_length", infos["episode"]["l"][i], global_step)

        # TRY NOT TO MODIFY: save data to reply buffer; after an episode ends, next_obs is its true final
        # observation (bootstrapped from on truncation: done = termination only)
        keep = ~autoreset
        rb.add(obs[keep], next_obs[keep], actions[keep], rewards[keep], terminations[keep])
        if her is not None:  # VLM-CaR: when an episode ends, k relabelled copies of each of its transitions
            rb.add(*her.step(obs, next_obs, actions, terminations, truncations, infos, autoreset))
        autoreset = np.logical_or(terminations, truncations)

        # TRY NOT TO MODIFY: CRUCIAL step easy to overlook
        obs = next_obs

        # ALGO LOGIC: training.
        if global_step > args.learning_starts:
            data_observations, data_actions, data_next_observations, data_rewards, data_dones = rb.sample(
                args.batch_size
            )
            with torch.no_grad():
                next_state_actions, next_state_log_pi, _ = actor.get_action(data_next_observations)
                qf1_next_target = qf1_target(data_next_observations, next_state_actions)
                qf2_next_target = qf2_target(data_next_observations, next_state_actions)
                min_qf_next_target = torch.min(qf1_next_target, qf2_next_target) - alpha * next_state_log_pi
                next_q_value = data_rewards.flatten() + (1 - data_dones.flatten()) * args.gamma * (
                    min_qf_next_target
                ).view(-1)

            qf1_a_values = qf1(data_observations, data_actions).view(-1)
            qf2_a_values = qf2(data_observations, data_actions).view(-1)
            qf1_loss = F.mse_loss(qf1_a_values, next_q_value)
            qf2_loss = F.mse_loss(qf2_a_values, next_q_value)
            qf_loss = qf1_loss + qf2_loss

            # optimize the model
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if iteration % args.policy_frequency == 0:  # TD 3 Delayed update support
                for _ in range(
                    args.policy_frequency
                ):  # compensate for the delay by doing 'actor_update_interval' instead of 1
                    pi, log_pi, _ = actor.get_action(data_observations)
                    qf1_pi = qf1(data_observations, pi)
                    qf2_pi = qf2(data_observations, pi)
                    min_qf_pi = torch.min(qf1_pi, qf2_pi)
                    actor_loss = ((alpha * log_pi) - min_qf_pi).mean()

                    actor_optimizer.zero_grad()
                    actor_loss.backward()
                    actor_optimizer.step()

                    if args.autotune:
                        with torch.no_grad():
                            _, log_pi, _ = actor.get_action(data_observations)
                        alpha_loss = (-log_alpha.exp() * (log_pi + target_entropy)).mean()

                        a_optimizer.zero_grad()
                        alpha_loss.backward()
                        a_optimizer.step()
                        alpha = log_alpha.exp().item()

            # update the target networks
            if iteration % args.target_network_frequency == 0:
                for param, target_param in zip(qf1.parameters(), qf1_target.parameters()):
                    target_param.data.copy_(args.tau * param.data + (1 - args.tau) * target_param.data)
                for param, target_param in zip(qf2.parameters(), qf2_target.parameters()):
                    target_param.data.copy_(args.tau * param.data + (1 - args.tau) * target_param.data)

            if iteration % 100 == 0 and actor_loss is not None:
                writer.add_scalar("losses/qf1_values", qf1_a_values.mean().item(), global_step)
                writer.add_scalar("losses/qf2_values", qf2_a_values.mean().item(), global_step)
                writer.add_scalar("losses/qf1_loss", qf1_loss.item(), global_step)
                writer.add_scalar("losses/qf2_loss", qf2_loss.item(), global_step)
                writer.add_scalar("losses/qf_loss", qf_loss.item() / 2.0, global_step)
                writer.add_scalar("losses/actor_loss", actor_loss.item(), global_step)
                writer.add_scalar("losses/alpha", alpha, global_step)
                print("SPS:", int(global_step / (time.time() - start_time)))
                writer.add_scalar("charts/SPS", int(global_step / (time.time() - start_time)), global_step)
                if iteration % 1000 == 0:
                    print(reward_hook.status())  # VLM-CaR: success rate, episodic return, sub-task rates
                if args.autotune:
                    writer.add_scalar("losses/alpha_loss", alpha_loss.item(), global_step)

    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.cleanrl_model"
        torch.save(
            {"actor": actor.state_dict(), "qf1": qf1.state_dict(), "qf2": qf2.state_dict()},
            model_path,
        )
        # a TorchScript copy (observation -> deterministic action) that loads without this file's classes
        example = torch.zeros((1,) + envs.single_observation_space.shape)
        torch.jit.trace(DeterministicPolicy(actor).cpu().eval(), example).save(f"runs/{run_name}/policy.pt")
        print(f"model saved to {model_path}")

    reward_hook.close()  # VLM-CaR: stop the confined program worker
    if her is not None:  # VLM-CaR: --her's counts; stop its program worker
        print(her.status())
        her.close()
    envs.close()
    writer.close()
